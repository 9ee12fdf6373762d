"""The interface every state store offers: read, write atomically, lock."""
from __future__ import annotations

import getpass
import os
import socket
import uuid
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Optional

from servectl.state.document import StateDocument

if TYPE_CHECKING:
    from servectl.history import HistoryEntry


@dataclass
class LockInfo:
    """Who holds a state lock, as Terraform's lock info: enough to decide on force-unlock."""

    id: str
    operation: str
    who: str
    created: str
    pid: int

    @classmethod
    def for_operation(cls, operation: str) -> "LockInfo":
        return cls(
            id=str(uuid.uuid4()),
            operation=operation,
            who=f"{getpass.getuser()}@{socket.gethostname()}",
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            pid=os.getpid(),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return f"{self.who} (pid {self.pid}) since {self.created} for '{self.operation}', lock ID {self.id}"


class StateStore(ABC):
    """Where a state document lives. Writes are whole-document and atomic."""

    @abstractmethod
    def describe(self) -> str:
        """Human name for messages, e.g. the file path or s3://bucket/key."""

    @abstractmethod
    def read(self) -> Optional[StateDocument]:
        """The stored document, or None when none exists yet."""

    @abstractmethod
    def write(self, document: StateDocument) -> None:
        """Replace the stored document atomically: readers see the old or the new, never a mix."""

    @abstractmethod
    def lock(self, operation: str) -> LockInfo:
        """Take the lock or raise LockError naming the holder."""

    @abstractmethod
    def unlock(self, info: LockInfo) -> None:
        """Release a lock this process took."""

    @abstractmethod
    def force_unlock(self, lock_id: str) -> LockInfo:
        """Release a stale lock, only when ``lock_id`` matches the holder's ID."""

    @abstractmethod
    def append_history(self, entry: "HistoryEntry") -> None:
        """Keep one applied version (written atomically, private)."""

    @abstractmethod
    def history(self) -> list["HistoryEntry"]:
        """Every kept version, oldest first."""

    @abstractmethod
    def latest_history(self) -> Optional["HistoryEntry"]:
        """The newest kept version only (one read, however long the history is), or None."""
