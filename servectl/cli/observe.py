"""``show``, ``drift`` and ``status``: read what the state records and what runs; change nothing."""
from __future__ import annotations

import json
from typing import List, Optional

import typer

from servectl.cli.common import VarOption, bounded, command, options, out, print_json
from servectl.render import outcomes
from servectl.render.plan import render_drift, render_state
from servectl.render.status import render_status
from servectl.sensitive import redact

MAX_WINDOW_S = 3600.0


@command
def show(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print the state as JSON.")) -> None:
    """Show what the state records."""
    document = options(ctx).workspace().read_state()
    if as_json:
        print_json(redact(json.loads(document.to_json())) if document else None)
    else:
        render_state(out, document)


@command
def drift(
    ctx: typer.Context,
    var: Optional[List[str]] = VarOption,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Read-only check for CI: drift (live ≠ state) and pending changes (config ≠ state). Exit 0 clean, 2 either, 1 error."""
    report = options(ctx).workspace(var).drift()
    if as_json:
        print_json(report.to_json())
    else:
        render_drift(out, report.drift, refreshing=False)
        outcomes.pending(out, report.pending)
    if not report.clean:
        raise typer.Exit(2)


@command
def status(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
    window: float = typer.Option(
        5.0, "--window", help="Seconds between the two metrics scrapes that rates come from (0: no rates; at most 3600).",
    ),
) -> None:
    """Show what runs now: replicas, health, request and error rates, latency, traffic weights."""
    report = options(ctx).workspace().status(bounded("--window", window, 0, MAX_WINDOW_S))
    if as_json:
        print_json(report.to_json())
    else:
        render_status(out, report)


def register(app: typer.Typer) -> None:
    """Add ``show``, ``drift`` and ``status`` to the root command."""
    app.command()(show)
    app.command("drift")(drift)
    app.command()(status)
