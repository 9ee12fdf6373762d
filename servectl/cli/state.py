"""``state list | show | history | migrate`` and ``force-unlock``: the recorded state and its lock."""
from __future__ import annotations

import typer

from servectl.cli.common import LockTimeoutOption, command, options, out, print_json
from servectl.errors import ServectlError
from servectl.render import outcomes
from servectl.render.plan import render_state

HISTORY_JSON_VERSION = 1  # of `state history --json`; see docs/reference/json.md

state_app = typer.Typer(no_args_is_help=True, help="Read the recorded state; move it to S3.")


@state_app.command("list")
@command
def state_list(ctx: typer.Context) -> None:
    """List the addresses in the state."""
    document = options(ctx).workspace().read_state()
    outcomes.state_addresses(out, sorted(document.resources if document else {}))


@state_app.command("show")
@command
def state_show(ctx: typer.Context, address: str = typer.Argument(..., help="e.g. backend.hello")) -> None:
    """Show one resource's recorded attributes."""
    document = options(ctx).workspace().read_state()
    if document is None or address not in document.resources:
        known = ", ".join(sorted(document.resources)) if document and document.resources else "none"
        raise ServectlError(f"no resource {address!r} in the state (recorded: {known})")
    render_state(out, document, address)


@state_app.command("history")
@command
def state_history(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print the history as JSON.")) -> None:
    """List the applied versions: serial, time, who, what."""
    entries = options(ctx).workspace().store.history_index()  # the index: no entry and no bundle is read
    if as_json:
        print_json({"format_version": HISTORY_JSON_VERSION, "history": outcomes.history_rows(entries)})
    else:
        outcomes.history(out, entries)


@state_app.command("migrate")
@command
def state_migrate(ctx: typer.Context, lock_timeout: str = LockTimeoutOption) -> None:
    """Move the local state and its history into the S3State the config declares."""
    workspace = options(ctx).workspace(lock_timeout=lock_timeout)
    document = workspace.migrate_state()
    outcomes.state_moved(out, workspace.store.describe(), document.lineage, document.serial)


@command
def force_unlock(ctx: typer.Context, lock_id: str = typer.Argument(..., help="The lock ID the error message named.")) -> None:
    """Release a stale state lock left by a crashed apply."""
    info = options(ctx).workspace().store.force_unlock(lock_id)
    outcomes.unlocked(out, info.id, info.describe())


def register(app: typer.Typer) -> None:
    """Add the ``state`` group and ``force-unlock`` to the root command."""
    app.add_typer(state_app, name="state")
    app.command("force-unlock")(force_unlock)
