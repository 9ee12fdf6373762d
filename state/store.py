"""The interface every state store offers: read, write atomically, lock."""
from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from servectl.config.blocks import HISTORY_KEEP as BLOCK_HISTORY_KEEP
from servectl.errors import LockError
from servectl.state.document import StateDocument

if TYPE_CHECKING:
    from servectl.state.history import HistoryEntry


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
        """A new lock record for ``operation``, held by this process: a fresh UUID4, user@host, now (UTC), pid."""
        return cls(
            id=str(uuid.uuid4()),
            operation=operation,
            who=f"{getpass.getuser()}@{socket.gethostname()}",
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            pid=os.getpid(),
        )

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict (what a lock record stores)."""
        return asdict(self)

    def describe(self) -> str:
        """One line naming the holder for lock messages: who, pid, since when, the operation and the lock ID."""
        return f"{self.who} (pid {self.pid}) since {self.created} for '{self.operation}', lock ID {self.id}"


WAIT_ADVICE = "; wait for it to finish"  # how a held lock's line ends without --lock-timeout (local state)
LOCK_POLL_FIRST_S = 0.1  # a held lock is tried again after this, then twice as long each time ...
LOCK_POLL_MAX_S = 2.0  # ... up to this: an apply that just finished is followed within 2 s; S3 sees ~1 request/2 s
HISTORY_KEEP = BLOCK_HISTORY_KEEP  # applied versions kept by default (servectl.config.History(keep=…))
INDEX_FORMAT_VERSION = 1


@dataclass
class HistorySummary:
    """One kept version as ``state history`` lists it, read from the history's index (no entry, no bundle)."""

    serial: int
    lineage: str
    time: str
    who: str
    operation: str
    summary: str
    applied: bool  # it holds a desired state to go back to (a destroy does not)

    @classmethod
    def of(cls, body: dict[str, Any]) -> "HistorySummary":
        """The summary of an entry's JSON body (``servectl.state.history.HistoryEntry.to_dict``)."""
        return cls(
            serial=int(body["serial"]), lineage=str(body["lineage"]), time=str(body["time"]), who=str(body["who"]),
            operation=str(body["operation"]), summary=str(body["summary"]), applied=body.get("desired") is not None,
        )


def kept_serials(index: list[HistorySummary], keep: int) -> set[int]:
    """Which entries a history of ``index`` keeps at ``keep``: the newest ``keep``, and always the newest entry (the
    state's version) and the newest two applied versions (what ``rollback`` goes back to)."""
    kept = {summary.serial for summary in index[-keep:]}
    if index:
        kept.add(index[-1].serial)
    kept |= {summary.serial for summary in [s for s in index if s.applied][-2:]}
    return kept


class StateStore(ABC):
    """Where a state document lives. Writes are whole-document and atomic.

    Its history (one entry per applied version, each with the config's files)
    is kept beside it with an index, so that listing it or rolling back reads
    the index and one entry, never every bundle; it is pruned to ``keep``
    entries on every append. Stores provide the storage primitives
    (``_history_*``); the index and pruning rules are here, once.
    """

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

    @contextlib.contextmanager
    def locked(
        self, operation: str, timeout_s: float = 0.0, waiting: Optional[Callable[[str], None]] = None,
    ) -> Iterator[LockInfo]:
        """Hold the lock for ``operation`` (apply, destroy, refresh, rollout, migrate) while the block runs, and release
        it however the block ends (Terraform holds its state lock the same way).

        A lock held by a running operation is waited for up to ``timeout_s`` seconds (Terraform's ``-lock-timeout``),
        polling with backoff (``LOCK_POLL_FIRST_S`` doubling to ``LOCK_POLL_MAX_S``); ``waiting`` gets the holder's
        line once, when the wait begins. Raises LockError naming the holder when the time is up, or at once for a
        lock nobody holds any more (only ``force-unlock`` clears that).
        """
        info = self._lock_within(operation, timeout_s, waiting)
        try:
            yield info
        finally:
            self.unlock(info)

    def _lock_within(self, operation: str, timeout_s: float, waiting: Optional[Callable[[str], None]]) -> LockInfo:
        deadline = time.monotonic() + timeout_s
        pause = LOCK_POLL_FIRST_S
        while True:
            try:
                return self.lock(operation)
            except LockError as err:
                left = deadline - time.monotonic()
                if not err.held or timeout_s <= 0:
                    raise
                held = str(err).removesuffix(WAIT_ADVICE)
                if left <= 0:
                    raise LockError(f"{held}; still held after --lock-timeout {timeout_s:g} s") from None
                if waiting is not None and pause == LOCK_POLL_FIRST_S:
                    waiting(f"{held}; waiting up to {timeout_s:g} s")
                time.sleep(min(pause, left))
                pause = min(pause * 2, LOCK_POLL_MAX_S)

    # -- history: storage primitives each store provides ---------------------------------------------------------

    @abstractmethod
    def _history_serials(self) -> list[int]:
        """The serials of the entries stored, ascending (a listing; no entry is read)."""

    @abstractmethod
    def _read_history_text(self, serial: int) -> Optional[tuple[str, str]]:
        """(JSON text, where it is for messages) of one entry, or None when it is not there."""

    @abstractmethod
    def _write_history_text(self, serial: int, text: str) -> None:
        """Store one entry's JSON text (atomically, private)."""

    @abstractmethod
    def _delete_history_entry(self, serial: int) -> None:
        """Remove one entry (pruning); gone already is fine."""

    @abstractmethod
    def _read_history_index(self) -> Optional[str]:
        """The index's JSON text, or None before the first index was written."""

    @abstractmethod
    def _write_history_index(self, text: str) -> None:
        """Store the index's JSON text (atomically, private)."""

    # -- history: what callers use ---------------------------------------------------------------------------------

    def append_history(self, entry: "HistoryEntry", keep: int = HISTORY_KEEP) -> None:
        """Keep one applied version, then prune the history to ``keep`` entries (see ``kept_serials``)."""
        body = entry.to_dict()
        self._write_history_text(entry.serial, json.dumps(body))
        index = [summary for summary in self.history_index() if summary.serial != entry.serial]
        index.append(HistorySummary.of(body))
        index.sort(key=lambda summary: summary.serial)
        kept = kept_serials(index, keep)
        self._write_index([summary for summary in index if summary.serial in kept])
        for summary in index:
            if summary.serial not in kept:
                self._delete_history_entry(summary.serial)

    def history_index(self) -> list[HistorySummary]:
        """Every kept version's summary, oldest first, from the index (built once from the entries if missing)."""
        text = self._read_history_index()
        if text is not None:
            try:
                body = json.loads(text)
                if body.get("format_version") == INDEX_FORMAT_VERSION:
                    return [HistorySummary(**row) for row in body["entries"]]
            except (ValueError, KeyError, TypeError, AttributeError):
                pass  # rebuilt below from the entries themselves
        index = []
        for serial in self._history_serials():
            found = self._read_history_text(serial)
            if found is None:
                continue
            try:
                index.append(HistorySummary.of(json.loads(found[0])))
            except (ValueError, KeyError, TypeError) as err:
                from servectl.errors import StateError

                raise StateError(f"{found[1]}: history entry is corrupt ({type(err).__name__}: {err})") from None
        if index:
            self._write_index(index)
        return index

    def _write_index(self, index: list[HistorySummary]) -> None:
        self._write_history_index(json.dumps(
            {"format_version": INDEX_FORMAT_VERSION, "entries": [asdict(summary) for summary in index]}
        ))

    def history_entry(self, serial: int) -> "HistoryEntry":
        """The kept version with ``serial``, bundle and all. Raises StateError when it is not kept or unreadable."""
        from servectl.errors import StateError
        from servectl.state.history import HistoryEntry

        found = self._read_history_text(serial)
        if found is None:
            raise StateError(f"history entry {serial} of {self.describe()} is not kept (`servectl state history` lists them)")
        text, where = found
        try:
            body = json.loads(text)
        except ValueError:
            raise StateError(f"{where}: history entry is unreadable") from None
        return HistoryEntry.from_dict(body, where)

    def history(self) -> list["HistoryEntry"]:
        """Every kept version with its bundle, oldest first (reads them all: `state migrate` needs them)."""
        return [self.history_entry(summary.serial) for summary in self.history_index()]

    def latest_history(self) -> Optional["HistoryEntry"]:
        """The newest kept version only (the index and one entry, however long the history is), or None."""
        index = self.history_index()
        return self.history_entry(index[-1].serial) if index else None
