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

from servectl.bundle import digest
from servectl.desired import DesiredState
from servectl.errors import StateError
from servectl.planfile import desired_from_dict, desired_to_dict
from servectl.sensitive import learn

HISTORY_FORMAT_VERSION = 1


@dataclass
class HistoryEntry:
    serial: int
    lineage: str
    time: str
    who: str
    operation: str  # apply, destroy, rollback, refresh
    summary: str
    desired: Optional[dict[str, Any]]  # planfile.desired_to_dict; None for a destroy
    bundle_b64: str = ""

    def to_dict(self) -> dict[str, Any]:
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
        if entry.bundle_b64 and digest(entry.bundle) != body.get("bundle_sha256"):
            raise StateError(f"{source}: history entry's config bundle is corrupt (digest mismatch)")
        return entry

    @property
    def bundle(self) -> bytes:
        return base64.b64decode(self.bundle_b64) if self.bundle_b64 else b""

    def desired_state(self, config_dir: str) -> DesiredState:
        if self.desired is None:
            raise StateError(f"history entry {self.serial} is a {self.operation}: there is nothing to go back to")
        desired = desired_from_dict(self.desired)
        desired.config_dir = config_dir
        return desired


def entry_for(
    serial: int, lineage: str, operation: str, summary: str, desired: Optional[DesiredState], frozen: bytes
) -> HistoryEntry:
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
