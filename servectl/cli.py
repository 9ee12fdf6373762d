"""The ``servectl`` command line: parse flags, call the library, render, pick an exit code."""
from __future__ import annotations

import functools
import json
import os
import signal
import sys
import traceback
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from servectl.errors import ConfigError, ServectlError
from servectl.loader import load_config
from servectl.render import render_plan, render_state
from servectl.drift import DriftReport
from servectl.sensitive import MaskedStream, mask, redact
from servectl.render import render_drift
from servectl.render_status import render_status
from servectl.render_events import ConsoleEvents, json_events, json_line
from servectl.events import EVENTS_JSON_VERSION
from servectl.render_rollout import RichDisplay, render_outcome
from servectl import rollout as rollouts
from servectl.workspace import Workspace

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Terraform-style plan/apply for model serving on Ray Serve.",
    pretty_exceptions_enable=False,
)
state_app = typer.Typer(no_args_is_help=True, help="Read the recorded state; move it to S3.")
app.add_typer(state_app, name="state")

# No emoji codes and no highlighting: rich must print what it is given, or a sensitive value rewritten on the way
# (":x:" in it, say) would no longer be recognised by the mask on stdout/stderr.
out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


class Context:
    """The root options every command reads: ``config_dir``, the config directory ``-C`` names (default ``.``)."""

    config_dir: str = "."


ctx = Context()


def _variables(pairs: Optional[List[str]]) -> dict[str, str]:
    variables = {}
    for pair in pairs or []:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--var {pair!r}: expected NAME=VALUE")
        variables[name.strip()] = raw
    return variables


def command(func: Callable[..., Any]) -> Callable[..., Any]:
    """Every user mistake becomes one red line and exit 1; never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except ServectlError as error:
            err.print(f"[red bold]Error:[/red bold] {escape(mask(str(error)))}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("[red bold]Interrupted.[/red bold] The state records every change that finished.")
            raise typer.Exit(1) from None
        except Exception as error:  # noqa: BLE001 - a bug in servectl: still one line unless asked
            if os.environ.get("SERVECTL_DEBUG"):
                traceback.print_exc()
            err.print(
                f"[red bold]Error:[/red bold] internal error: {type(error).__name__}: {escape(mask(str(error)))} "
                "(set SERVECTL_DEBUG=1 for a traceback and report it)"
            )
            raise typer.Exit(1) from None

    return wrapper


@app.callback()
def main_options(
    config_dir: str = typer.Option(".", "-C", "--config-dir", help="Config directory holding main.py."),
) -> None:
    """Root options, parsed before any command: record ``-C/--config-dir`` in ``ctx``."""
    ctx.config_dir = config_dir


def _workspace(var: Optional[List[str]] = None) -> Workspace:
    return Workspace(ctx.config_dir, _variables(var))


VarOption = typer.Option(None, "--var", help="Set a variable: NAME=VALUE (repeatable).")
TargetOption = typer.Option(
    None, "--target", help="Plan only this resource (and what it needs), e.g. backend.NAME (repeatable; exceptional use)."
)


def _warn_targeting(targets: Optional[List[str]]) -> None:
    if targets:
        err.print(
            "[yellow bold]Warning:[/yellow bold] resource targeting is in effect: the plan covers only "
            f"{escape(', '.join(targets))} and what they need, so it may not show every change the config "
            "makes. Use --target for exceptional cases (recovering from a mistake, working around a limit), "
            "not routine use; plan without it afterwards."
        )


@app.command()
@command
def validate(var: Optional[List[str]] = VarOption) -> None:
    """Load and check the config without contacting any cluster."""
    desired = load_config(ctx.config_dir, _variables(var))
    backends, endpoints = len(desired.backends()), len(desired.endpoints())
    out.print(f"[green]The configuration is valid[/green]: {backends} backend(s), {endpoints} endpoint(s).")


@app.command()
@command
def plan(
    var: Optional[List[str]] = VarOption,
    detailed_exitcode: bool = typer.Option(False, "--detailed-exitcode", help="Exit 2 when there are changes."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    out_path: Optional[str] = typer.Option(None, "--out", help="Save the plan to apply later with `apply FILE`."),
    refresh_only: bool = typer.Option(False, "--refresh-only", help="Show only drift: how the live system differs from the state."),
    target: Optional[List[str]] = TargetOption,
) -> None:
    """Show what apply would change, and where the replicas would go."""
    workspace = _workspace(var)
    if refresh_only:
        if out_path:
            raise ServectlError("--out cannot be used with --refresh-only")
        _, items = workspace.detect_drift()
        if as_json:
            _print_json(DriftReport(drift=items).to_json())
        else:
            render_drift(out, items, refreshing=True)
        if detailed_exitcode and items:
            raise typer.Exit(2)
        return
    planned = workspace.plan(targets=target)
    _warn_targeting(target)  # once the targets are known to exist: a bad one is the only line
    if as_json:
        _print_json(redact(planned.plan.to_dict()))
    else:
        render_plan(out, planned.plan)
        _note_rollouts(out, planned)
    if out_path:
        workspace.save_plan(planned, out_path)
        if not as_json:
            out.print(f"\nSaved the plan to {escape(out_path)}. To carry out exactly these changes, run:\n"
                      f"  servectl -C {escape(workspace.config_dir)} apply {escape(out_path)}")
    unfinished = [name for name, declared in rollouts.declared(planned.desired) if declared["status"] in UNFINISHED]
    if detailed_exitcode and (planned.plan.has_changes() or unfinished):
        raise typer.Exit(2)


UNFINISHED = (rollouts.PENDING, rollouts.PROGRESSING, rollouts.PAUSED)  # `plan --detailed-exitcode` counts them as work


def _approve(what: str) -> None:
    out.print(f"\nDo you want to {what}? Only 'yes' will be accepted to approve.")
    try:
        answer = input("  Enter a value: ")
    except EOFError:
        answer = ""
    if answer.strip() != "yes":
        raise ServectlError(f"{what.split()[0]} cancelled: not approved (type 'yes', or pass --auto-approve)")


ApproveOption = typer.Option(False, "--auto-approve", help="Skip the confirmation.")
TimeoutOption = typer.Option(300.0, "--timeout", help="Seconds to wait for each change to become healthy (1 to 86400).")


def _print_json(body: Any) -> None:
    """Machine output: the JSON text as is (no pretty-printer re-parsing it: a 10,000-change plan stays fast),
    through the same sensitive-value mask as everything else."""
    sys.stdout.write(json.dumps(body, indent=2) + "\n")
    sys.stdout.flush()


def _bounded(flag: str, value: float, low: float, high: float) -> float:
    """``value`` if ``low <= value <= high`` (and a number); ServectlError naming ``flag`` and the range otherwise."""
    if not low <= value <= high:  # NaN fails this too
        raise ServectlError(f"{flag} {value:g} is out of range: give {low:g} to {high:g}")
    return value


def _plan_and_apply(
    var: Optional[List[str]], auto_approve: bool, timeout: float, destroy: bool, targets: Optional[List[str]] = None,
    console: Optional[Console] = None, as_json: bool = False,
) -> Workspace:
    """Plan, show the plan, ask (unless ``auto_approve``), apply; ``as_json``: the plan, each event and a summary as
    JSON lines on stdout instead (``apply --json``)."""
    shown = console or out
    workspace = _workspace(var)
    planned = workspace.plan(destroy=destroy, targets=targets)
    _warn_targeting(targets)
    operation = "destroy" if destroy else "apply"
    if as_json:
        json_line({"format_version": EVENTS_JSON_VERSION, "type": "plan", "plan": redact(planned.plan.to_dict())})
    else:
        render_plan(shown, planned.plan)
        if not destroy:
            _note_rollouts(shown, planned)
    if planned.plan.has_changes() and not auto_approve:
        _approve("destroy all these resources" if destroy else "apply these changes")
    serial = planned.state.serial if planned.state else 0
    if not planned.plan.has_changes() and not destroy:
        recorded = workspace.record_applied_version(planned)
        if recorded is not None and not as_json:
            shown.print(f"Recorded the applied version (state serial {recorded}) in the history: its apply was "
                        "interrupted before it could.")
    else:
        serial = workspace.apply(planned, json_events if as_json else ConsoleEvents(shown), timeout).serial
        if not as_json:
            verb = "Destroy" if destroy else "Apply"
            shown.print(f"\n[green bold]{verb} complete![/green bold] {planned.plan.tally()}; state serial {serial}.")
    if as_json:
        json_line(_summary(operation, planned.plan, serial))
    return workspace


def _summary(operation: str, plan: Any, serial: int) -> dict[str, Any]:
    """The last line of ``apply --json``: what the apply did and the state serial it left."""
    counts = plan.to_dict()["summary"]
    return {"format_version": EVENTS_JSON_VERSION, "type": "summary", "operation": operation, **counts, "serial": serial}


def _note_rollouts(console: Console, planned: Any) -> None:
    for endpoint, declared in rollouts.declared(planned.desired):
        status = declared["status"]
        where = f"endpoint {escape(endpoint)}: {escape(rollouts.describe(declared))}"
        if status in (rollouts.PENDING, rollouts.PROGRESSING):
            at = "" if status == rollouts.PENDING else f", now at {declared['weight']:.1%}"
            console.print(f"[bold]Rollout[/bold] {where} ({status}{at}); `servectl apply` or `servectl rollout` runs it.")
        elif status == rollouts.PAUSED:
            console.print(f"[yellow bold]Rollout paused[/yellow bold] at {declared['weight']:.1%}, {where}: "
                          f"{escape(declared['reason'])}; `servectl rollout --resume` or `--abort`.")
        elif status == rollouts.ABORTED:
            console.print(f"[red]Rollout aborted[/red], {where}: {escape(declared['reason'])}; all traffic is on "
                          f"{escape(declared['stable'])} (`servectl rollout --retry` starts it again).")


def _drive_rollouts(
    workspace: Workspace, console: Console, timeout: float, resume: bool = False, abort: bool = False,
    retry: bool = False,
) -> list[rollouts.RolloutReport]:
    runner = rollouts.RolloutRunner(workspace, ConsoleEvents(console), RichDisplay(console), timeout)
    reports = runner.run(resume=resume, abort=abort, retry=retry)
    for report in reports:
        if report.acted:
            render_outcome(console, report)
    return reports


@app.command()
@command
def apply(
    plan_file: Optional[str] = typer.Argument(None, metavar="[PLANFILE]", help="A plan saved by `plan --out`."),
    var: Optional[List[str]] = VarOption,
    auto_approve: bool = ApproveOption,
    timeout: float = TimeoutOption,
    refresh_only: bool = typer.Option(False, "--refresh-only", help="Accept drift: record the live values in the state."),
    target: Optional[List[str]] = TargetOption,
    as_json: bool = typer.Option(
        False, "--json", help="Print the plan, each change as it starts and ends, and a summary as JSON lines."
    ),
) -> None:
    """Plan, confirm, and carry out the changes; wait until every backend is healthy.

    With PLANFILE: carry out exactly that saved plan, without planning again or asking.
    With --refresh-only: record the live system's values in the state (accept drift); change nothing live.
    With --json (and --auto-approve, or a PLANFILE): one JSON object per line, for CI.
    """
    timeout = _bounded("--timeout", timeout, 1, 86_400)
    if as_json and refresh_only:
        raise ServectlError("--json cannot be used with --refresh-only (use `servectl drift --json` to read drift)")
    if as_json and plan_file is None and not auto_approve:
        raise ServectlError("--json asks nothing: pass --auto-approve (or apply a saved plan)")
    if refresh_only:
        if plan_file is not None:
            raise ServectlError("--refresh-only cannot be used with a saved plan")
        workspace = _workspace(var)
        state, items = workspace.detect_drift()
        render_drift(out, items, refreshing=True)
        if not items:
            return
        if not auto_approve:
            _approve("record these live values in the state")
        document, skipped = workspace.accept_drift(state, items)
        for line in skipped:
            out.print(f"[yellow]{escape(line)}[/yellow]")
        out.print(f"\n[green bold]Refresh complete![/green bold] The state records the live values; state serial {document.serial}.")
        return
    if plan_file is None:
        workspace = _plan_and_apply(var, auto_approve, timeout, destroy=False, targets=target, as_json=as_json)
        if not target and rollouts.declared(workspace.load()):  # a declared rollout runs with the apply
            line = rollouts.failure(_drive_rollouts(workspace, err if as_json else out, timeout))
            if line:
                raise ServectlError(line)
        return
    if var:
        raise ServectlError("--var cannot be used with a saved plan: its variables were fixed when it was planned")
    plan, document = _workspace().apply_saved(plan_file, json_events if as_json else ConsoleEvents(out), timeout)
    if as_json:
        json_line(_summary("apply", plan, document.serial))
    elif not plan.has_changes():
        out.print("[green]No changes.[/green] The saved plan had nothing to do.")
    else:
        out.print(f"\n[green bold]Apply complete![/green bold] {plan.tally()}; state serial {document.serial}.")


@app.command("rollout")
@command
def rollout_command(
    var: Optional[List[str]] = VarOption,
    auto_approve: bool = ApproveOption,
    timeout: float = TimeoutOption,
    resume: bool = typer.Option(False, "--resume", help="Go on from a paused rollout to its next step."),
    abort: bool = typer.Option(False, "--abort", help="Send all traffic back to the stable backend; stop the rollout."),
    retry: bool = typer.Option(False, "--retry", help="Start an aborted rollout again from its first step."),
    as_json: bool = typer.Option(False, "--json", help="Print what happened as JSON (progress goes to stderr)."),
) -> None:
    """Apply the config, then move each declared Rollout step by step, gated by its analysis.

    Exit 0 when every rollout completed (or there was nothing to do); 1 when one was aborted or paused by
    its gates, with the reason.
    """
    timeout = _bounded("--timeout", timeout, 1, 86_400)
    if sum((resume, abort, retry)) > 1:
        raise ServectlError("give one of --resume, --abort and --retry")
    shown = err if as_json else out
    workspace = _workspace(var)
    if not rollouts.declared(workspace.load()):
        raise ServectlError(
            "the config declares no Rollout(...): add one, e.g. Rollout(endpoint=api, new=v2, steps=[0.1, 0.5, 1.0])"
        )
    if not abort:
        if as_json and not auto_approve and workspace.plan().plan.has_changes():
            raise ServectlError("the config has changes to apply first: pass --auto-approve with --json")
        workspace = _plan_and_apply(var, auto_approve, timeout, destroy=False, console=shown)
    reports = _drive_rollouts(workspace, shown, timeout, resume=resume, abort=abort, retry=retry)
    if as_json:
        _print_json({
            "format_version": rollouts.ROLLOUT_JSON_VERSION, "rollouts": [report.to_dict() for report in reports],
        })
    else:
        for report in reports:
            if not report.acted:
                render_outcome(out, report)
    line = rollouts.failure(reports)
    if line:
        raise ServectlError(line)


@app.command()
@command
def destroy(var: Optional[List[str]] = VarOption, auto_approve: bool = ApproveOption, timeout: float = TimeoutOption) -> None:
    """Remove every resource the config created; stop the embedded Ray cluster."""
    timeout = _bounded("--timeout", timeout, 1, 86_400)
    _plan_and_apply(var, auto_approve, timeout, destroy=True)


@app.command()
@command
def show(as_json: bool = typer.Option(False, "--json", help="Print the state as JSON.")) -> None:
    """Show what the state records."""
    document = _workspace().read_state()
    if as_json:
        _print_json(redact(json.loads(document.to_json())) if document else None)
    else:
        render_state(out, document)


@app.command("drift")
@command
def drift_command(
    var: Optional[List[str]] = VarOption,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Read-only check for CI: drift (live ≠ state) and pending changes (config ≠ state). Exit 0 clean, 2 either, 1 error."""
    report = _workspace(var).drift()
    if as_json:
        _print_json(report.to_json())
    else:
        render_drift(out, report.drift, refreshing=False)
        if report.pending:
            out.print("[bold]Pending:[/bold] the config differs from the state (run `servectl plan` for the diff):")
            for change in report.pending:
                out.print(f"  {escape(change['action'])} {escape(change['address'])}: {escape('; '.join(change['reasons']))}")
        else:
            out.print("Nothing pending: the state matches the config.")
    if not report.clean:
        raise typer.Exit(2)


@app.command()
@command
def status(
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
    window: float = typer.Option(
        5.0, "--window", help="Seconds between the two metrics scrapes that rates come from (0: no rates; at most 3600).",
    ),
) -> None:
    """Show what runs now: replicas, health, request and error rates, latency, traffic weights."""
    report = _workspace().status(_bounded("--window", window, 0, 3600))
    if as_json:
        _print_json(report.to_json())
    else:
        render_status(out, report)


@state_app.command("history")
@command
def state_history(as_json: bool = typer.Option(False, "--json", help="Print the history as JSON.")) -> None:
    """List the applied versions: serial, time, who, what."""
    entries = _workspace().store.history_index()  # the index: no entry and no bundle is read
    rows = [
        {"serial": e.serial, "time": e.time, "who": e.who, "operation": e.operation, "summary": e.summary}
        for e in entries
    ]
    if as_json:
        _print_json({"format_version": 1, "history": rows})
        return
    if not rows:
        out.print("No history: nothing has been applied here.")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("serial", "time", "who", "operation", "summary"):
        table.add_column(column, justify="right" if column == "serial" else "left")
    for row in rows:
        table.add_row(str(row["serial"]), row["time"], row["who"], row["operation"], row["summary"])
    out.print(table)


@app.command()
@command
def rollback(
    to: Optional[int] = typer.Option(None, "--to", help="The serial to return to (`servectl state history`)."),
    auto_approve: bool = ApproveOption,
    timeout: float = TimeoutOption,
) -> None:
    """Plan and apply a return to the previous applied version (or --to SERIAL), with its own code."""
    timeout = _bounded("--timeout", timeout, 1, 86_400)
    workspace = _workspace()
    with workspace.rollback(to) as planned:
        render_plan(out, planned.plan)
        if not planned.plan.has_changes():
            return
        if not auto_approve:
            _approve(f"{planned.operation.split(' to ')[0]} these changes")
        document = workspace.apply(planned, ConsoleEvents(out), timeout)
    out.print(f"\n[green bold]Rollback complete![/green bold] {planned.plan.tally()}; state serial {document.serial}.")


@state_app.command("list")
@command
def state_list() -> None:
    """List the addresses in the state."""
    document = _workspace().read_state()
    for address in sorted(document.resources if document else {}):
        out.print(address)


@state_app.command("show")
@command
def state_show(address: str = typer.Argument(..., help="e.g. backend.hello")) -> None:
    """Show one resource's recorded attributes."""
    document = _workspace().read_state()
    if document is None or address not in document.resources:
        known = ", ".join(sorted(document.resources)) if document and document.resources else "none"
        raise ServectlError(f"no resource {address!r} in the state (recorded: {known})")
    render_state(out, document, address)


@state_app.command("migrate")
@command
def state_migrate() -> None:
    """Move the local state and its history into the S3State the config declares."""
    workspace = _workspace()
    document = workspace.migrate_state()
    out.print(
        f"[green]State moved[/green] to {escape(workspace.store.describe())} (lineage {document.lineage}, serial "
        f"{document.serial}); the local copy is kept as servectl.state.json.migrated."
    )


@app.command("force-unlock")
@command
def force_unlock(lock_id: str = typer.Argument(..., help="The lock ID the error message named.")) -> None:
    """Release a stale state lock left by a crashed apply."""
    info = _workspace().store.force_unlock(lock_id)
    out.print(f"[green]Lock {escape(info.id)} released[/green] (was held by {escape(info.describe())}).")


def main() -> None:
    """The ``servectl`` entry point: every text it writes passes through the sensitive-value mask."""
    sys.stdout = MaskedStream(sys.stdout)  # type: ignore[assignment]
    sys.stderr = MaskedStream(sys.stderr)  # type: ignore[assignment]
    signal.signal(signal.SIGTERM, _terminated)  # a CI runner's cancel, `kill`: as Ctrl-C, never a stack dump
    app()


def _terminated(signum: int, frame: Any) -> None:
    """SIGTERM ends a command the way SIGINT does: the state keeps every finished change, the lock is released."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
