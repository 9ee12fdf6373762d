"""What the engine reports while it changes things: typed events, rendered by a view for people or as JSON.

The engine (``servectl.engine.apply``, ``servectl.engine.workspace``, the rollout runner)
never formats text: it calls an ``Emit`` with an ``Event`` (as Terraform's
engine calls its hooks, ``PreApply``/``PostApply``), and each command's view
renders them — ``servectl.render.events`` as the ``›`` progress lines, or
``apply --json`` as one JSON object per event.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from servectl.statuses import Word

EVENTS_JSON_VERSION = 1  # of `apply --json`'s lines; see the JSON reference


class EventKind(Word):
    """What happened."""

    CHANGE_STARTED = "change_started"  # a resource change begins (index of total)
    CHANGE_FINISHED = "change_finished"  # it is live and healthy (after ``seconds``)
    CHANGE_FAILED = "change_failed"  # it failed (``message``); the engine reverts it on the cluster
    REVERT_UNFINISHED = "revert_unfinished"  # the revert after a failure did not finish (``message``)
    PROVIDER = "provider"  # a provider's own step: starting the embedded head, waiting for nodes, …
    NOTE = "note"  # anything else the engine tells (a rollout's step)


@dataclass(frozen=True)
class Event:
    """One thing the engine reports: its kind, the resource ``address`` and plan ``action`` it is about (empty for
    provider steps and notes), its place in the apply (``index`` of ``total``, from 1), how long it took
    (``seconds``, for a finished change) and a ``message`` (an error, a provider's words)."""

    kind: EventKind
    address: str = ""
    action: str = ""
    index: int = 0
    total: int = 0
    seconds: Optional[float] = None
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The event as ``apply --json`` prints it (``type: "event"``, versioned)."""
        body: dict[str, Any] = {"format_version": EVENTS_JSON_VERSION, "type": "event", "kind": str(self.kind)}
        for key in ("address", "action", "message"):
            if getattr(self, key):
                body[key] = getattr(self, key)
        if self.total:
            body["index"], body["total"] = self.index, self.total
        if self.seconds is not None:
            body["seconds"] = round(self.seconds, 3)
        return body


Emit = Callable[[Event], None]


def provider_steps(emit: Emit) -> Callable[[str], None]:
    """A provider's ``progress(message)`` callback that reports each message as a PROVIDER event through ``emit``."""
    return lambda message: emit(Event(EventKind.PROVIDER, message=message))


def notes(emit: Emit) -> Callable[[str], None]:
    """A ``progress(message)`` callback for the engine's own words (a rollout's steps): NOTE events."""
    return lambda message: emit(Event(EventKind.NOTE, message=message))
