"""What a command says besides its plan or report: how it ended, warnings, notes, the history table.

Every line the CLI prints in prose lives here, so a wording (or its colour) is
changed once; the CLI passes data, never markup.
"""
from __future__ import annotations

from typing import Any, Iterable

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from servectl.planning.rollout_position import ABORTED, PAUSED, PENDING, PROGRESSING, declared, describe
from servectl.model.desired import DesiredState
from servectl.state.store import HistorySummary


def error(console: Console, message: str) -> None:
    """``Error: MESSAGE`` in red: the one line a user mistake gets (``message`` is already masked)."""
    console.print(f"[red bold]Error:[/red bold] {escape(message)}")


def interrupted(console: Console) -> None:
    """What Ctrl-C (or SIGTERM) leaves: the state keeps every finished change."""
    console.print("[red bold]Interrupted.[/red bold] The state records every change that finished.")


def internal_error(console: Console, kind: str, message: str) -> None:
    """A bug in servectl, still as one line: the exception's type and (masked) message, and how to see more."""
    console.print(
        f"[red bold]Error:[/red bold] internal error: {kind}: {escape(message)} "
        "(set SERVECTL_DEBUG=1 for a traceback and report it)"
    )


def targeting_warning(console: Console, targets: list[str]) -> None:
    """Terraform's warning for ``-target``: the plan may not show every change the config makes."""
    console.print(
        "[yellow bold]Warning:[/yellow bold] resource targeting is in effect: the plan covers only "
        f"{escape(', '.join(targets))} and what they need, so it may not show every change the config "
        "makes. Use --target for exceptional cases (recovering from a mistake, working around a limit), "
        "not routine use; plan without it afterwards."
    )


def valid(console: Console, backends: int, endpoints: int) -> None:
    """``validate``'s line."""
    console.print(f"[green]The configuration is valid[/green]: {backends} backend(s), {endpoints} endpoint(s).")


def approval_prompt(console: Console, what: str) -> None:
    """Terraform's confirmation question (``what``: "apply these changes")."""
    console.print(f"\nDo you want to {what}? Only 'yes' will be accepted to approve.")


def plan_saved(console: Console, path: str, config_dir: str) -> None:
    """Where ``plan --out`` saved the plan and the command that applies exactly it."""
    console.print(f"\nSaved the plan to {escape(path)}. To carry out exactly these changes, run:\n"
                  f"  servectl -C {escape(config_dir)} apply {escape(path)}")


def complete(console: Console, operation: str, tally: str, serial: int) -> None:
    """``Apply complete! 1 added, …; state serial 7.`` for apply, destroy, rollback (``operation``: their verb)."""
    console.print(f"\n[green bold]{operation.capitalize()} complete![/green bold] {tally}; state serial {serial}.")


def refresh_complete(console: Console, serial: int, skipped: Iterable[str]) -> None:
    """``apply --refresh-only``'s end: what it could not record, then the new serial."""
    for line in skipped:
        console.print(f"[yellow]{escape(line)}[/yellow]")
    console.print(f"\n[green bold]Refresh complete![/green bold] The state records the live values; state serial {serial}.")


def saved_plan_empty(console: Console) -> None:
    """A saved plan with nothing to do."""
    console.print("[green]No changes.[/green] The saved plan had nothing to do.")


def version_recorded(console: Console, serial: int) -> None:
    """An apply that found nothing to change but recorded the version an interrupted apply had not."""
    console.print(f"Recorded the applied version (state serial {serial}) in the history: its apply was "
                  "interrupted before it could.")


def rollout_notes(console: Console, desired: DesiredState) -> None:
    """One line per declared rollout that is not completed: where it stands and what runs it next."""
    for endpoint, rollout in declared(desired):
        status = rollout["status"]
        where = f"endpoint {escape(endpoint)}: {escape(describe(rollout))}"
        if status in (PENDING, PROGRESSING):
            at = "" if status == PENDING else f", now at {rollout['weight']:.1%}"
            console.print(f"[bold]Rollout[/bold] {where} ({status}{at}); `servectl apply` or `servectl rollout` runs it.")
        elif status == PAUSED:
            console.print(f"[yellow bold]Rollout paused[/yellow bold] at {rollout['weight']:.1%}, {where}: "
                          f"{escape(rollout['reason'])}; `servectl rollout --resume` or `--abort`.")
        elif status == ABORTED:
            console.print(f"[red]Rollout aborted[/red], {where}: {escape(rollout['reason'])}; all traffic is on "
                          f"{escape(rollout['stable'])} (`servectl rollout --retry` starts it again).")


def pending(console: Console, changes: list[dict[str, Any]]) -> None:
    """``drift``'s second part: the config's changes against the state (or that there are none)."""
    if not changes:
        console.print("Nothing pending: the state matches the config.")
        return
    console.print("[bold]Pending:[/bold] the config differs from the state (run `servectl plan` for the diff):")
    for change in changes:
        console.print(f"  {escape(change['action'])} {escape(change['address'])}: {escape('; '.join(change['reasons']))}")


def history_rows(entries: list[HistorySummary]) -> list[dict[str, Any]]:
    """The history as ``state history --json`` lists it: serial, time, who, operation, summary per entry."""
    return [
        {"serial": e.serial, "time": e.time, "who": e.who, "operation": e.operation, "summary": e.summary}
        for e in entries
    ]


def history(console: Console, entries: list[HistorySummary]) -> None:
    """``state history``: one row per kept version, or a line saying there is none."""
    rows = history_rows(entries)
    if not rows:
        console.print("No history: nothing has been applied here.")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("serial", "time", "who", "operation", "summary"):
        table.add_column(column, justify="right" if column == "serial" else "left")
    for row in rows:
        table.add_row(str(row["serial"]), row["time"], row["who"], row["operation"], row["summary"])
    console.print(table)


def state_moved(console: Console, where: str, lineage: str, serial: int) -> None:
    """``state migrate``'s line."""
    console.print(
        f"[green]State moved[/green] to {escape(where)} (lineage {lineage}, serial {serial}); the local copy is kept "
        "as servectl.state.json.migrated."
    )


def waiting_for_lock(console: Console, holder: str) -> None:
    """Terraform's "Acquiring state lock" note when ``--lock-timeout`` waits: ``holder`` is the lock's (masked) line
    with how long the wait may last."""
    console.print(f"[dim]Acquiring the state lock: {escape(holder)} (--lock-timeout) …[/dim]")


def unlocked(console: Console, lock_id: str, holder: str) -> None:
    """``force-unlock``'s line."""
    console.print(f"[green]Lock {escape(lock_id)} released[/green] (was held by {escape(holder)}).")


def state_addresses(console: Console, addresses: Iterable[str]) -> None:
    """``state list``: one address per line."""
    for address in addresses:
        console.print(escape(address))
