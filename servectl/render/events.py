"""Engine events as the lines people read while a command runs (``› backend.a: creating … (1/2)``)."""
from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from rich.markup import escape

from servectl.engine.events import Event, EventKind
from servectl.model.plan import Action
from servectl.sensitive import mask

if TYPE_CHECKING:
    from rich.console import Console

VERBS = {Action.CREATE: "creating", Action.UPDATE: "updating in place", Action.REPLACE: "replacing",
         Action.DELETE: "destroying", Action.NOOP: "checking"}
DONE = {Action.CREATE: "created", Action.UPDATE: "updated", Action.REPLACE: "replaced", Action.DELETE: "destroyed",
        Action.NOOP: "checked"}


def describe(event: Event) -> str:
    """The one line that tells ``event`` (without the ``›`` marker the console view adds)."""
    if event.kind is EventKind.CHANGE_STARTED:
        return f"{event.address}: {VERBS[Action(event.action)]} … ({event.index}/{event.total})"
    if event.kind is EventKind.CHANGE_FINISHED:
        return f"{event.address}: {DONE[Action(event.action)]} in {event.seconds or 0.0:.1f}s"
    if event.kind is EventKind.CHANGE_FAILED:
        return f"{event.address}: failed — reverting it on the cluster"
    if event.kind is EventKind.REVERT_UNFINISHED:
        return f"{event.address}: revert did not finish: {event.message}"
    return event.message


class ConsoleEvents:
    """The human view of a running command: each event one ``›`` line on ``console`` (masked, markup-escaped)."""

    def __init__(self, console: "Console") -> None:
        self.console = console

    def __call__(self, event: Event) -> None:
        self.console.print(f"[cyan]›[/cyan] {escape(mask(describe(event)))}")


def json_line(body: dict) -> None:
    """Write ``body`` as one compact JSON line to stdout (newline-delimited JSON, as ``apply --json`` speaks)."""
    sys.stdout.write(json.dumps(body, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def json_events(event: Event) -> None:
    """The machine view of a running command: each event one JSON line (``Event.to_dict``)."""
    json_line(event.to_dict())
