"""Saved plans: `plan --out FILE` writes one, `apply FILE` carries out exactly that plan.

The file holds the plan, the desired state it was computed from, the config
dir's files (a bundle: the code that will be deployed), the state's lineage
and serial, and a fingerprint of the live system. `apply FILE` refuses when
the state or the live system moved since, rather than applying a plan made
against a world that no longer exists.
"""
from __future__ import annotations

import base64
import hashlib
import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

from servectl.version import __version__
from servectl.loading.bundle import digest
from servectl.model.desired import DesiredState, ProviderSpec, ResourceSpec, StateBackendSpec
from servectl.errors import ServectlError
from servectl.model.plan import Plan
from servectl.sensitive import learn
from servectl.statuses import ProviderKind
from servectl.config.blocks import HISTORY_KEEP

PLAN_FORMAT = "servectl-plan"
PLAN_FORMAT_VERSION = 1


class PlanFileError(ServectlError):
    """A saved plan that cannot be used: unreadable, from a newer servectl, or stale."""


@dataclass
class SavedPlan:
    """A plan file as read back: the plan, the desired state it came from, the config dir's files (``bundle``, zip
    bytes), the live system's fingerprint at plan time (None when none was taken) and when and by which servectl.
    """

    plan: Plan
    desired: DesiredState
    bundle: bytes
    live_fingerprint: Optional[str]
    created_at: str
    servectl_version: str

    @property
    def config_dir(self) -> str:
        """The config dir the plan was made for (from its desired state)."""
        return self.desired.config_dir


def desired_to_dict(desired: DesiredState) -> dict[str, Any]:
    """A DesiredState as JSON-ready data (its dataclasses as dicts), for plan files and history entries;
    ``desired_from_dict`` reads it back.
    """
    return {
        "config_dir": desired.config_dir,
        "provider": dataclasses.asdict(desired.provider),
        "variables": desired.variables,
        "resources": {address: dataclasses.asdict(spec) for address, spec in desired.resources.items()},
        "state_backend": dataclasses.asdict(desired.state_backend) if desired.state_backend else None,
        "history_keep": desired.history_keep,
    }


def desired_from_dict(body: dict[str, Any]) -> DesiredState:
    """The DesiredState ``desired_to_dict`` wrote; a missing or 0 ``history_keep`` reads as HISTORY_KEEP.
    Raises KeyError, TypeError or ValueError when ``body`` is malformed.
    """
    return DesiredState(
        config_dir=body["config_dir"],
        provider=_provider_spec(body["provider"]),
        resources={address: ResourceSpec(**spec) for address, spec in body["resources"].items()},
        variables=dict(body.get("variables") or {}),
        state_backend=StateBackendSpec(**body["state_backend"]) if body.get("state_backend") else None,
        history_keep=int(body.get("history_keep") or HISTORY_KEEP),
    )


def _body_digest(body: dict) -> str:
    """sha256 over everything the file says (but this digest): an edited plan file is refused, not applied."""
    covered = {key: value for key, value in body.items() if key != "body_sha256"}
    return hashlib.sha256(json.dumps(covered, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write(path: str, plan: Plan, desired: DesiredState, bundle: bytes, live_fingerprint: Optional[str]) -> None:
    """Save a plan file at ``path`` (``plan --out``), replacing it atomically, mode 0600 (temp file, fsync, rename).

    It holds the plan, ``desired``, the ``bundle`` (base64, with its sha256), the ``live_fingerprint``, the time and
    servectl version, and a sha256 over all of it, so an edited file is refused by ``read``.
    """
    body = {
        "format": PLAN_FORMAT,
        "format_version": PLAN_FORMAT_VERSION,
        "servectl_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "live_fingerprint": live_fingerprint,
        "plan": plan.to_dict(),
        "desired": desired_to_dict(desired),
        "bundle_sha256": digest(bundle),
        "bundle": base64.b64encode(bundle).decode("ascii"),
    }
    body["body_sha256"] = _body_digest(body)
    directory = os.path.dirname(os.path.abspath(path)) or "."
    try:
        fd, temp_path = tempfile.mkstemp(prefix=".servectl-plan.", dir=directory)
    except OSError as err:
        raise PlanFileError(f"cannot write the plan to {path}: {err.strerror}") from None
    try:
        os.fchmod(fd, 0o600)  # the bundle and the plan may hold sensitive values
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(body, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.unlink(temp_path)
        raise


def read(path: str) -> SavedPlan:
    """Read and check a plan file for ``apply FILE``, as Terraform applies a saved plan.

    Raises PlanFileError when the file is missing, not a plan file, from a newer servectl, edited after it was written
    (digest mismatch) or corrupt (including a bundle whose digest does not match). Whether the state or the live
    system moved since is for the caller to check.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            body = json.load(handle)
    except FileNotFoundError:
        raise PlanFileError(f"{path}: no such plan file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise PlanFileError(f"{path}: not a servectl plan file (unreadable or not JSON)") from None
    if not isinstance(body, dict) or body.get("format") != PLAN_FORMAT:
        raise PlanFileError(f"{path}: not a servectl plan file")
    learn(body)
    version = body.get("format_version")
    if not isinstance(version, int) or version > PLAN_FORMAT_VERSION:
        raise PlanFileError(
            f"{path}: plan format {version} was written by a newer servectl (this one reads up to "
            f"{PLAN_FORMAT_VERSION}); plan again with this servectl"
        )
    if body.get("body_sha256") != _body_digest(body):
        raise PlanFileError(f"{path}: the plan file was modified after servectl wrote it (its digest does not match); "
                            "plan again")
    try:
        bundle = base64.b64decode(body["bundle"], validate=True)
        if digest(bundle) != body["bundle_sha256"]:
            raise ValueError("bundle digest mismatch")
        return SavedPlan(
            plan=Plan.from_dict(body["plan"]),
            desired=desired_from_dict(body["desired"]),
            bundle=bundle,
            live_fingerprint=body.get("live_fingerprint"),
            created_at=str(body.get("created_at", "")),
            servectl_version=str(body.get("servectl_version", "")),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise PlanFileError(f"{path}: plan file is corrupt ({type(err).__name__}: {err}); plan again") from None


def _provider_spec(body: dict[str, Any]) -> ProviderSpec:
    """A ProviderSpec as ``desired_to_dict`` wrote it; files written before the provider block was generic keep it
    under ``aws``."""
    fields = dict(body)
    if "aws" in fields:
        fields["block"] = fields.pop("aws")
    return ProviderSpec(**{**fields, "kind": ProviderKind(fields["kind"])})

