"""Sensitive values: `sensitive("…")` in a config keeps a value out of everything servectl prints.

In the desired state and the state file a sensitive value is held as
``{"__servectl_sensitive__": value}``: diffs and hashes still see it change,
the state (0600) keeps it to apply it, the provider reveals it only in what it
sends to the cluster, and plan, show, drift and their JSON print
``(sensitive)`` instead.
"""
from __future__ import annotations

from typing import Any, Callable

MARK = "__servectl_sensitive__"
REDACTED = "(sensitive)"


class Sensitive:
    """A config value never to be printed. ``repr`` hides it too, so errors cannot leak it."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "sensitive(…)"


def sensitive(value: Any) -> Sensitive:
    """Mark ``value`` (a string, number or JSON value) as sensitive."""
    return value if isinstance(value, Sensitive) else Sensitive(value)


def is_marked(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and MARK in value


def to_plain(value: Any) -> Any:
    """Config value → attribute value: Sensitive becomes its marked form, recursively."""
    if isinstance(value, Sensitive):
        return {MARK: to_plain(value.value)}
    if isinstance(value, dict):
        return {key: to_plain(inner) for key, inner in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(inner) for inner in value]
    return value


def _replace_marked(value: Any, replace: Callable[[Any], Any]) -> Any:
    if is_marked(value):
        return replace(value)
    if isinstance(value, dict):
        return {key: _replace_marked(inner, replace) for key, inner in value.items()}
    if isinstance(value, list):
        return [_replace_marked(inner, replace) for inner in value]
    return value


def reveal(value: Any) -> Any:
    """The real values, for what is sent to the cluster only."""
    return _replace_marked(value, lambda marked: reveal(marked[MARK]))


def redact(value: Any) -> Any:
    """What may be printed: every sensitive value replaced by ``(sensitive)``."""
    return _replace_marked(value, lambda marked: REDACTED)


def holds_sensitive(value: Any) -> bool:
    if is_marked(value):
        return True
    if isinstance(value, dict):
        return any(holds_sensitive(inner) for inner in value.values())
    if isinstance(value, list):
        return any(holds_sensitive(inner) for inner in value)
    return False
