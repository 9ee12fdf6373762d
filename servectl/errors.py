"""The error family users see: each one is a single actionable line."""
from __future__ import annotations


class ServectlError(Exception):
    """A user-facing failure. ``str(err)`` is the one line the CLI prints."""


class ConfigError(ServectlError):
    """The config module is wrong: names a file:line or resource address and the fix."""


class PlanError(ServectlError):
    """The desired state cannot be reached (e.g. replicas that cannot be placed)."""


class StateError(ServectlError):
    """The state file is unreadable, from a newer servectl, or otherwise unusable."""


class LockError(StateError):
    """Another operation holds the state lock.

    ``held`` is False when the lock is a record nobody holds any more (a crashed operation's, which only
    ``force-unlock`` clears): waiting for it (``--lock-timeout``) cannot help.
    """

    def __init__(self, message: str, held: bool = True) -> None:
        super().__init__(message)
        self.held = held


class ProviderError(ServectlError):
    """The provider could not carry out or observe a change."""


class ApplyError(ServectlError):
    """A change failed while applying; the state records what was done before it."""
