"""State in a local JSON file beside the config, with an OS lock plus a lock record."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import tempfile
from typing import Optional

from servectl.errors import LockError, StateError
from servectl.state.document import StateDocument
from servectl.state.store import WAIT_ADVICE, LockInfo, StateStore

STATE_FILE = "servectl.state.json"
INDEX_NAME = "index.json"  # the history's index, beside the entries (0000000007.json, …)


class LocalStateStore(StateStore):
    """``servectl.state.json`` in the config dir, written 0600 via temp file + fsync + rename.

    Locking takes an OS lock (``flock``) for the duration of the operation and
    leaves a lock record beside the state. A process killed mid-apply loses its
    OS lock but leaves the record, so the next operation stops and names it
    until ``force-unlock`` clears it — a crashed apply is noticed, not ignored.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.lock_path = self.path + ".lock"
        self.lock_info_path = self.path + ".lock.info"
        self.history_dir = self.path + ".history"
        self._lock_fd: Optional[int] = None

    @classmethod
    def in_dir(cls, config_dir: str) -> "LocalStateStore":
        """The store for ``servectl.state.json`` in ``config_dir``."""
        return cls(os.path.join(config_dir, STATE_FILE))

    def describe(self) -> str:
        """The state file's absolute path."""
        return self.path

    def read(self) -> Optional[StateDocument]:
        """The parsed state file, or None when there is none.

        Raises StateError when it cannot be read, when group or others have any permission on it (it may hold secrets;
        the message says to ``chmod 600``), or when it is corrupt (see ``StateDocument.from_json``).
        """
        try:
            with open(self.path, encoding="utf-8") as handle:
                mode = os.fstat(handle.fileno()).st_mode & 0o777
                text = handle.read()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise StateError(f"{self.path}: cannot read state: {err.strerror}") from None
        if mode & 0o077:
            # servectl writes it 0600: sensitive values and the cluster's token live in it.
            raise StateError(
                f"{self.path}: the state file is open to other users (mode {mode:04o}); it may hold secrets: "
                f"run `chmod 600 {self.path}` (and check who read it)"
            )
        return StateDocument.from_json(text, self.path)

    def write(self, document: StateDocument) -> None:
        """Replace the state file with ``document`` atomically, mode 0600 (see ``write_private``)."""
        write_private(self.path, document.to_json())

    def _history_path(self, serial: int) -> str:
        return os.path.join(self.history_dir, f"{serial:010d}.json")

    def _history_serials(self) -> list[int]:
        try:
            names = os.listdir(self.history_dir)
        except FileNotFoundError:
            return []
        return sorted(int(name[:-5]) for name in names if name.endswith(".json") and name[:-5].isdigit())

    def _read_history_text(self, serial: int) -> Optional[tuple[str, str]]:
        path = self._history_path(serial)
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read(), path
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):
            raise StateError(f"{path}: history entry is unreadable") from None

    def _write_history_text(self, serial: int, text: str) -> None:
        os.makedirs(self.history_dir, mode=0o700, exist_ok=True)
        write_private(self._history_path(serial), text)

    def _delete_history_entry(self, serial: int) -> None:
        try:
            os.unlink(self._history_path(serial))
        except FileNotFoundError:
            pass

    def _read_history_index(self) -> Optional[str]:
        try:
            with open(os.path.join(self.history_dir, INDEX_NAME), encoding="utf-8") as handle:
                return handle.read()
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    def _write_history_index(self, text: str) -> None:
        os.makedirs(self.history_dir, mode=0o700, exist_ok=True)
        write_private(os.path.join(self.history_dir, INDEX_NAME), text)

    def _read_lock_info(self) -> Optional[LockInfo]:
        try:
            with open(self.lock_info_path, encoding="utf-8") as handle:
                return LockInfo(**json.load(handle))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            return LockInfo(id="unreadable", operation="?", who="?", created="?", pid=0)

    def lock(self, operation: str) -> LockInfo:
        """Take the ``flock`` on ``PATH.lock`` without waiting, then write the lock record ``PATH.lock.info``.

        Raises LockError naming the holder when another process holds the flock, or when a record is still there with
        no process holding the flock (a crashed operation: ``force-unlock`` clears it); StateError when ``flock`` fails
        for another reason.
        """
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StateError(f"{self.lock_path}: cannot lock state: {err.strerror}") from None
            holder = self._read_lock_info()
            who = holder.describe() if holder else "another process"
            raise LockError(f"state {self.path} is locked by {who}{WAIT_ADVICE}") from None
        stale = self._read_lock_info()
        if stale is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise LockError(
                f"state {self.path} is locked by {stale.describe()}, which is no longer running; "
                f"if nothing else is applying, run `servectl force-unlock {stale.id}`", held=False,
            )
        info = LockInfo.for_operation(operation)
        record_fd = os.open(self.lock_info_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(record_fd, "w", encoding="utf-8") as handle:
            json.dump(info.to_dict(), handle)
            handle.flush()
            os.fsync(handle.fileno())
        self._lock_fd = fd
        return info

    def unlock(self, info: LockInfo) -> None:
        """Release this process's lock: delete the record if it still has ``info``'s ID, then drop the flock."""
        current = self._read_lock_info()
        if current is not None and current.id == info.id:
            os.unlink(self.lock_info_path)
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def force_unlock(self, lock_id: str) -> LockInfo:
        """Delete a stale lock record whose ID is ``lock_id``, as ``terraform force-unlock``; returns that record.

        Raises LockError when there is no record, when the ID does not match, or when a running process still holds the
        flock (a live operation is never unlocked).
        """
        current = self._read_lock_info()
        if current is None:
            raise LockError(f"state {self.path} is not locked; nothing to unlock")
        if current.id != lock_id:
            raise LockError(f"lock ID {lock_id!r} does not match the lock on {self.path} (held with ID {current.id})")
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise LockError(
                f"lock {lock_id} is held by a running process ({current.describe()}); it will release it when done"
            ) from None
        try:
            os.unlink(self.lock_info_path)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        return current


# Fault injection for the crash-safety test: SIGKILL this process halfway through its Nth state write.
_KILL_IN_WRITE = int(os.environ.get("SERVECTL_FAULT_KILL_IN_STATE_WRITE") or 0)
_writes = [0]


def write_private(path: str, text: str) -> None:
    """Replace ``path`` atomically with ``text``, readable by the owner only (temp file, fsync, rename)."""
    directory = os.path.dirname(path)
    fd, temp_path = tempfile.mkstemp(prefix=".servectl.state.", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            _writes[0] += 1
            if _writes[0] == _KILL_IN_WRITE:
                handle.write(text[: len(text) // 2])
                handle.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_path, path)
    except BaseException:
        try:
            os.unlink(temp_path)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
