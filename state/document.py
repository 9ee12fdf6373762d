"""The state document: what servectl applied, as versioned JSON.

Shaped after Terraform's state: ``format_version`` says how to read the file,
``lineage`` names one state's life (set at creation, never changed) and
``serial`` counts its writes. Old formats are upgraded by one function each;
a file from a newer servectl is refused rather than guessed at.
"""
from __future__ import annotations

import copy
import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from servectl.errors import StateError
from servectl.statuses import ResourceStatus
from servectl.sensitive import learn

FORMAT_VERSION = 1

APPLIED = ResourceStatus.APPLIED
FAILED = ResourceStatus.FAILED
APPLYING = ResourceStatus.APPLYING


@dataclass
class ResourceState:
    """One resource as last applied: its attributes and the provider's identifiers for it."""

    kind: str
    name: str
    attributes: dict[str, Any]
    live: dict[str, Any] = field(default_factory=dict)
    status: ResourceStatus = APPLIED
    error: Optional[str] = None

    @property
    def address(self) -> str:
        """The resource's address, ``KIND.NAME`` (as a Terraform resource address)."""
        return f"{self.kind}.{self.name}"


@dataclass
class StateDocument:
    """The whole state file: what servectl last applied, shaped after Terraform's state.

    ``lineage`` names this state's life and ``serial`` counts its writes; ``provider`` holds the provider's attributes
    plus what it reported (``live``); ``resources`` maps each address to its ResourceState; ``config_snapshot`` holds
    the variables and resource attributes of the last apply (``{"variables": …, "resources": {address: attributes}}``).
    """

    lineage: str
    serial: int = 0
    servectl_version: str = ""
    provider: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, ResourceState] = field(default_factory=dict)
    config_snapshot: dict[str, Any] = field(default_factory=dict)
    updated_at: str = ""

    @classmethod
    def new(cls) -> "StateDocument":
        """A fresh, empty state: a new random lineage (UUID4), serial 0."""
        return cls(lineage=str(uuid.uuid4()))

    def to_json(self) -> str:
        """The state file's text: indented JSON with ``format_version`` first, resources sorted by address, and a
        final newline.
        """
        body = {
            "format_version": FORMAT_VERSION,
            "lineage": self.lineage,
            "serial": self.serial,
            "servectl_version": self.servectl_version,
            "updated_at": self.updated_at,
            "provider": self.provider,
            "resources": {address: asdict(r) for address, r in sorted(self.resources.items())},
            "config_snapshot": self.config_snapshot,
        }
        return json.dumps(body, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> "StateDocument":
        """Parse a state file's text (``source`` names it in messages), upgrading older formats (see ``upgrade``).

        Its sensitive values are learnt, so they stay masked in everything this process prints. Raises StateError when
        the text is not JSON, not a servectl state file, from a newer servectl, or has missing or ill-typed fields.
        """
        try:
            body = json.loads(text)
        except json.JSONDecodeError as err:
            raise StateError(
                f"{source}: state file is corrupt (invalid JSON at line {err.lineno}); restore it from a backup "
                "— servectl will not overwrite it"
            ) from None
        if not isinstance(body, dict) or not isinstance(body.get("format_version"), int):
            raise StateError(f"{source}: not a servectl state file (no format_version); servectl will not overwrite it")
        body = upgrade(body, source)
        learn(body)  # what it holds sensitive stays masked in everything this process prints
        try:
            resources = {address: ResourceState(**{**r, "status": ResourceStatus(r.get("status", APPLIED))})
                         for address, r in body["resources"].items()}
            return cls(
                lineage=str(body["lineage"]),
                serial=int(body["serial"]),
                servectl_version=str(body.get("servectl_version", "")),
                provider=dict(body.get("provider") or {}),
                resources=resources,
                config_snapshot=dict(body.get("config_snapshot") or {}),
                updated_at=str(body.get("updated_at", "")),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise StateError(f"{source}: state file is corrupt ({type(err).__name__}: {err}); servectl will not overwrite it") from None

    def copy(self) -> "StateDocument":
        """A deep copy, to change without touching this document."""
        return copy.deepcopy(self)

    def stamp(self, version: str) -> None:
        """Mark one more write: bump the serial and record when and by which servectl."""
        self.serial += 1
        self.servectl_version = version
        self.updated_at = datetime.now(timezone.utc).isoformat(timespec="seconds")


# One function per old format, each returning the next format's body.
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def upgrade(body: dict[str, Any], source: str) -> dict[str, Any]:
    """Bring a state file's parsed ``body`` up to FORMAT_VERSION, one ``UPGRADES`` step per old version.

    Raises StateError when the body is from a newer servectl (refused, as Terraform refuses a newer state) or when no
    upgrade exists for its version. ``source`` names the file in messages.
    """
    version = body["format_version"]
    if version > FORMAT_VERSION:
        raise StateError(
            f"{source}: state format {version} was written by a newer servectl (this one reads up to "
            f"{FORMAT_VERSION}); upgrade servectl — the file is left untouched"
        )
    while version < FORMAT_VERSION:
        if version not in UPGRADES:
            raise StateError(f"{source}: state format {version} is too old to read; no upgrade path exists")
        body = UPGRADES[version](body)
        version = body["format_version"]
    return body
