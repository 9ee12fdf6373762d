"""Applied versions, kept so that any of them can be planned and applied again (`servectl rollback`).

Every apply, destroy, rollback and refresh appends one entry: the state's
serial and lineage after it, when, who, a one-line summary, the desired state
it applied and the config dir's files (a bundle). Rolling back needs neither
the old config files nor the old code on disk: both are in the entry.
"""
from __future__ import annotations

import base64
import getpass
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

from servectl.loading.bundle import digest
from servectl.model.desired import DesiredState
from servectl.errors import StateError
from servectl.planning.planfile import desired_from_dict, desired_to_dict
from servectl.sensitive import learn

HISTORY_FORMAT_VERSION = 1


@dataclass
class HistoryEntry:
    """One kept version, as ``state history`` and ``rollback`` use it: the state's serial and lineage after the
    operation, when (UTC, ISO 8601), who (user@host), a one-line summary, the desired state it applied and the
    config dir's files (``bundle_b64``: the zip, base64; "" when none).
    """

    serial: int
    lineage: str
    time: str
    who: str
    operation: str  # apply, destroy, rollback, refresh
    summary: str
    desired: Optional[dict[str, Any]]  # planfile.desired_to_dict; None for a destroy
    bundle_b64: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The entry's stored JSON body: its fields, ``format_version`` and the bundle's sha256 ("" without one)."""
        return {
            "format_version": HISTORY_FORMAT_VERSION,
            "serial": self.serial,
            "lineage": self.lineage,
            "time": self.time,
            "who": self.who,
            "operation": self.operation,
            "summary": self.summary,
            "desired": self.desired,
            "bundle_sha256": digest(self.bundle) if self.bundle_b64 else "",
            "bundle": self.bundle_b64,
        }

    @classmethod
    def from_dict(cls, body: dict[str, Any], source: str) -> "HistoryEntry":
        """The entry ``to_dict`` wrote (``source`` names it in messages); sensitive values in its desired state are
        learnt, so they stay masked. Raises StateError when its format is newer than this servectl reads, a field is
        missing or ill-typed, or the bundle's digest does not match.
        """
        version = body.get("format_version")
        if not isinstance(version, int) or version > HISTORY_FORMAT_VERSION:
            raise StateError(f"{source}: history entry format {version} is newer than this servectl reads; upgrade servectl")
        learn(body.get("desired"))
        try:
            entry = cls(
                serial=int(body["serial"]), lineage=str(body["lineage"]), time=str(body["time"]), who=str(body["who"]),
                operation=str(body["operation"]), summary=str(body["summary"]), desired=body.get("desired"),
                bundle_b64=str(body.get("bundle") or ""),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise StateError(f"{source}: history entry is corrupt ({type(err).__name__}: {err})") from None
        try:
            bundle = entry.bundle
        except ValueError:  # binascii.Error: not base64
            raise StateError(f"{source}: history entry's config bundle is corrupt (not base64)") from None
        if entry.bundle_b64 and digest(bundle) != body.get("bundle_sha256"):
            raise StateError(f"{source}: history entry's config bundle is corrupt (digest mismatch)")
        return entry

    @property
    def bundle(self) -> bytes:
        """The config dir's files as zip bytes (decoded from ``bundle_b64``); b"" when the entry has none."""
        return base64.b64decode(self.bundle_b64) if self.bundle_b64 else b""

    def desired_state(self, config_dir: str) -> DesiredState:
        """The desired state this entry applied, its ``config_dir`` set to ``config_dir`` (where it is applied again).
        Raises StateError when the entry holds none (a destroy).
        """
        if self.desired is None:
            raise StateError(f"history entry {self.serial} is a {self.operation}: there is nothing to go back to")
        desired = desired_from_dict(self.desired)
        desired.config_dir = config_dir
        return desired


def entry_for(
    serial: int, lineage: str, operation: str, summary: str, desired: Optional[DesiredState], frozen: bytes
) -> HistoryEntry:
    """A new entry for the state's ``serial``/``lineage`` after ``operation``, stamped now (UTC) with user@host;
    ``desired`` None (a destroy) stores no desired state, ``frozen`` is the bundle's zip bytes (b"": none).
    """
    return HistoryEntry(
        serial=serial,
        lineage=lineage,
        time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        who=f"{getpass.getuser()}@{socket.gethostname()}",
        operation=operation,
        summary=summary,
        desired=desired_to_dict(desired) if desired is not None else None,
        bundle_b64=base64.b64encode(frozen).decode("ascii") if frozen else "",
    )
