"""Processes servectl started, known by identity rather than by PID alone.

A PID in a file outlives its process: after a crash or a reboot the number
may belong to anybody. So servectl records, with each PID it starts, the
boot it started in, the process's start time (clock ticks since boot, from
``/proc/PID/stat``) and its executable, and signals a process only while all
three still match — through a pidfd where the kernel has them, so the check
and the signal name the same process. The processes below a recorded one are
found by session: everything servectl starts leads a session of its own
(``start_new_session``), and Ray's workers, which re-parent and take process
groups of their own, keep their session. Nothing is ever chosen by what its
command line says.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Optional


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _stat(pid: int) -> Optional[list[str]]:
    """The fields of ``/proc/PID/stat`` after the command name (field 3 onwards), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _executable(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


@dataclass(frozen=True)
class ProcessIdentity:
    """Who a recorded PID was: ``boot_id``, ``start_ticks`` (since boot) and ``executable`` tell it from a reuse."""

    pid: int
    start_ticks: int
    executable: str
    boot_id: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, body: Any) -> Optional["ProcessIdentity"]:
        """The identity recorded in ``body``; None when it is missing or malformed (an old or edited record)."""
        try:
            return cls(int(body["pid"]), int(body["start_ticks"]), str(body["executable"]), str(body["boot_id"]))
        except (KeyError, TypeError, ValueError):
            return None


def identify(pid: int) -> Optional[ProcessIdentity]:
    """The identity of the live process ``pid`` now (None if there is none)."""
    fields = _stat(pid)
    if fields is None or len(fields) < 20:
        return None
    return ProcessIdentity(pid=pid, start_ticks=int(fields[19]), executable=_executable(pid), boot_id=_boot_id())


def is_running(identity: Optional[ProcessIdentity]) -> bool:
    """Whether the process ``identity`` names still runs (not a zombie, not a stranger with its PID)."""
    if identity is None:
        return False
    fields = _stat(identity.pid)
    if fields is None or fields[0] == "Z":
        return False
    return identify(identity.pid) == identity


def session_members(leader: ProcessIdentity) -> list[int]:
    """Every live process in the session ``leader`` started, the leader included when it still runs.

    A session id is its leader's PID, and Linux reuses no PID while a session
    still carries it, so members outlive a dead leader safely; if the PID leads
    another process's session now (the leader is dead and the number reused),
    nothing is ours.
    """
    if leader.boot_id != _boot_id():
        return []
    fields = _stat(leader.pid)
    if fields is not None and (int(fields[19]) != leader.start_ticks or (fields[0] != "Z" and identify(leader.pid) != leader)):
        return []  # the number was reused, which Linux does only once our session has no member left
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat(int(entry))
        if fields is None or len(fields) < 20 or fields[0] == "Z":
            continue
        if int(fields[3]) == leader.pid and int(fields[19]) >= leader.start_ticks:
            members.append(int(entry))
    return members


def signal_verified(pid: int, sig: int, expected: Optional[ProcessIdentity] = None) -> bool:
    """Send ``sig`` to ``pid`` if it is still the process we found (``expected``, else whoever ``pid`` is now and
    stays until the signal). Returns whether it was sent; a process gone meanwhile is not an error."""
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, AttributeError, OSError):
        fd = None
    try:
        now = identify(pid)
        if now is None or (expected is not None and now != expected):
            return False
        if fd is not None:
            signal.pidfd_send_signal(fd, sig)
        else:
            os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        if fd is not None:
            os.close(fd)


def stop_session(leader: ProcessIdentity, grace_s: float, kill_s: float) -> None:
    """SIGTERM every member of ``leader``'s session, then SIGKILL what is left after ``grace_s`` seconds.

    Members are found and identified before any signal, so a process that
    exits and lends its PID to another in between is never hit.
    """
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, kill_s)):
        targets = {pid: identify(pid) for pid in session_members(leader)}
        for pid, identity in targets.items():
            if identity is not None:
                signal_verified(pid, sig, identity)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not _alive(targets.items()):
                break
            time.sleep(0.1)
        if not session_members(leader):
            return


def _alive(targets: Iterable[tuple[int, Optional[ProcessIdentity]]]) -> bool:
    return any(is_running(identity) for _, identity in targets if identity is not None)
