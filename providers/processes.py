"""Processes servectl started, known by identity rather than by PID alone.

A PID in a file outlives its process: after a crash or a reboot the number
may belong to anybody. So servectl records, with each PID it starts, the
boot it started in, the process's start time (clock ticks since boot, from
``/proc/PID/stat``), its executable and a random tag servectl put in its
environment, and signals a process only while all of them still match —
through a pidfd where the kernel has them, so the check and the signal name
the same process. The processes below a recorded one are found by session:
everything servectl starts leads a session of its own (``start_new_session``),
and Ray's workers, which re-parent and take process groups of their own, keep
their session and inherit the tag. Nothing is ever chosen by what its command
line says.
"""
from __future__ import annotations

import os
import secrets
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
    """The process's executable; an upgrade that replaces the file (pip, apt) leaves the process running it."""
    try:
        return os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
    except OSError:
        return ""


TAG_VARIABLE = "SERVECTL_PROCESS_TAG"


def _environment_tag(pid: int) -> Optional[str]:
    """The value of TAG_VARIABLE in the environment ``pid`` started with (None: unreadable or absent)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            for entry in handle.read().split(b"\0"):
                if entry.startswith(TAG_VARIABLE.encode() + b"="):
                    return entry.split(b"=", 1)[1].decode(errors="replace")
    except OSError:
        return None
    return None


def _environ_empty(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return handle.read(1) == b""
    except OSError:
        return False


def new_tag() -> str:
    """A fresh tag to start a session with: every process of it carries it in its environment."""
    return secrets.token_hex(12)


@dataclass(frozen=True)
class ProcessIdentity:
    """Who a recorded PID was: ``boot_id``, ``start_ticks`` (since boot) and ``executable`` tell it from a reuse."""

    pid: int
    start_ticks: int
    executable: str
    boot_id: str
    tag: str = ""  # TAG_VARIABLE's value in the environment servectl started the session with

    def to_dict(self) -> dict[str, Any]:
        """The identity as a JSON-ready dict of its fields, as ``from_dict`` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, body: Any) -> Optional["ProcessIdentity"]:
        """The identity recorded in ``body``; None when it is missing or malformed (an old or edited record)."""
        try:
            identity = cls(int(body["pid"]), int(body["start_ticks"]), str(body["executable"]), str(body["boot_id"]),
                           str(body.get("tag") or ""))
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        return identity if identity.pid > 1 else None  # 0 and 1 are never a process servectl started


# Linux closes a new program's close-on-exec descriptors (the pipe subprocess.Popen waits on) before it places the
# program's arguments and environment: for a moment after Popen returns, /proc/PID/environ reads empty.
EXEC_SETTLE_S = 1.0


def identify(pid: int, tag: str = "") -> Optional[ProcessIdentity]:
    """The identity of the live process ``pid`` now (None if there is none), with the ``tag`` it was started with.

    With a ``tag`` (a process just started), waits at most EXEC_SETTLE_S seconds for its environment to be in
    place, so that a membership check made at once (``session_members``) finds the tag.
    """
    deadline = time.monotonic() + EXEC_SETTLE_S
    while tag and _environment_tag(pid) is None and _environ_empty(pid) and time.monotonic() < deadline:
        time.sleep(0.005)
    fields = _stat(pid)
    if fields is None or len(fields) < 20:
        return None
    return ProcessIdentity(pid=pid, start_ticks=int(fields[19]), executable=_executable(pid), boot_id=_boot_id(), tag=tag)


def _is(pid: int, identity: ProcessIdentity) -> bool:
    now = identify(pid, identity.tag)
    if now is None or now != identity:
        return False
    return not identity.tag or _environment_tag(pid) == identity.tag


def is_running(identity: Optional[ProcessIdentity]) -> bool:
    """Whether the process ``identity`` names still runs (not a zombie, not a stranger with its PID)."""
    if identity is None:
        return False
    fields = _stat(identity.pid)
    if fields is None or fields[0] == "Z":
        return False
    return _is(identity.pid, identity)


def session_members(leader: ProcessIdentity) -> list[int]:
    """Every live process in the session ``leader`` started, the leader included when it still runs.

    A member has the leader's PID as its session id and started after the
    leader. The session is taken for ours only if one of them carries the
    session's tag in the environment it started with: Linux reuses no PID
    while a session still carries it, so a session id shared with one of our
    processes is ours alone, while a stranger's session that reused the number
    after all of ours died carries no tag. (A process that retitles itself,
    as Ray's Python workers do, overwrites its environment block; its
    C++ daemons and HAProxy keep theirs.)
    """
    if leader.boot_id != _boot_id():
        return []
    if not leader.tag:
        return [leader.pid] if is_running(leader) else []  # a record from before tags: the leader alone, if proven
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat(int(entry))
        if fields is None or len(fields) < 20 or fields[0] == "Z":
            continue
        if int(fields[3]) == leader.pid and int(fields[19]) >= leader.start_ticks:
            members.append(int(entry))
    if not any(_environment_tag(pid) == leader.tag for pid in members):
        return []
    return members


def signal_verified(pid: int, sig: int, expected: Optional[ProcessIdentity] = None) -> bool:
    """Send ``sig`` to ``pid`` if it is still the process we found (``expected``, else whoever ``pid`` is now and
    stays until the signal). Returns whether it was sent; a process gone meanwhile is not an error."""
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, AttributeError, OSError):
        fd = None
    try:
        if expected is not None and not _is(pid, expected):
            return False
        if expected is None and identify(pid) is None:
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

    Members are found and identified before any signal (the tagged ones may
    exit first, after which the session could no longer be told ours), and a
    process is signalled only while it is still the one identified then.
    """
    targets = {pid: identify(pid) for pid in session_members(leader)}
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, kill_s)):
        targets.update({pid: identify(pid) for pid in session_members(leader) if pid not in targets})
        alive = {pid: identity for pid, identity in targets.items() if identity is not None and is_running(identity)}
        if not alive:
            return
        for pid, identity in alive.items():
            signal_verified(pid, sig, identity)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _alive(alive.items()):
            time.sleep(0.1)


def _alive(targets: Iterable[tuple[int, Optional[ProcessIdentity]]]) -> bool:
    return any(is_running(identity) for _, identity in targets if identity is not None)
