"""``apply``, ``destroy`` and ``rollback``: plan, confirm, carry out; as events for people or as JSON lines."""
from __future__ import annotations

from typing import Any, List, Optional

import typer
from rich.console import Console

from servectl.cli.common import (
    ApproveOption, CliContext, LockTimeoutOption, TargetOption, TimeoutOption, VarOption, approve, command, err,
    options, out, timeout_s, warn_targeting,
)
from servectl.engine import rollout as rollouts
from servectl.engine.events import EVENTS_JSON_VERSION
from servectl.engine.workspace import Workspace
from servectl.errors import ServectlError
from servectl.model.plan import Plan
from servectl.render import outcomes
from servectl.render.events import ConsoleEvents, json_events, json_line
from servectl.render.plan import render_drift, render_plan
from servectl.render.rollout import RichDisplay, render_outcome
from servectl.sensitive import redact


def plan_and_apply(
    cli: CliContext, var: Optional[List[str]], auto_approve: bool, timeout: float, destroy: bool,
    targets: Optional[List[str]] = None, console: Optional[Console] = None, as_json: bool = False,
    lock_timeout: str = "0s",
) -> Workspace:
    """Plan, show the plan, ask (unless ``auto_approve``), apply; ``as_json``: the plan, each event and a summary as
    JSON lines on stdout instead (``apply --json``). Returns the workspace, for a rollout to go on with."""
    shown = console or out
    workspace = cli.workspace(var, lock_timeout, notes=err if as_json else shown)
    operation = "destroy" if destroy else "apply"
    with workspace.locked(operation):  # before planning, as Terraform: a plan made while waiting would be stale
        _plan_and_apply(workspace, operation, auto_approve, timeout, destroy, targets, shown, as_json)
    return workspace


def _plan_and_apply(
    workspace: Workspace, operation: str, auto_approve: bool, timeout: float, destroy: bool,
    targets: Optional[List[str]], shown: Console, as_json: bool,
) -> None:
    planned = workspace.plan(destroy=destroy, targets=targets)
    warn_targeting(targets)
    if as_json:
        json_line({"format_version": EVENTS_JSON_VERSION, "type": "plan", "plan": redact(planned.plan.to_dict())})
    else:
        render_plan(shown, planned.plan)
        if not destroy:
            outcomes.rollout_notes(shown, planned.desired)
    if planned.plan.has_changes() and not auto_approve:
        approve("destroy all these resources" if destroy else "apply these changes")
    serial = planned.state.serial if planned.state else 0
    if not planned.plan.has_changes() and not destroy:
        recorded = workspace.record_applied_version(planned)
        if recorded is not None and not as_json:
            outcomes.version_recorded(shown, recorded)
    else:
        serial = workspace.apply(planned, json_events if as_json else ConsoleEvents(shown), timeout).serial
        if not as_json:
            outcomes.complete(shown, operation, planned.plan.tally(), serial)
    if as_json:
        json_line(summary(operation, planned.plan, serial))


def drive_rollouts(
    workspace: Workspace, console: Console, timeout: float, resume: bool = False, abort: bool = False,
    retry: bool = False,
) -> list[rollouts.RolloutReport]:
    """Run every declared rollout once (``RolloutRunner``), rendering progress and each outcome on ``console``."""
    runner = rollouts.RolloutRunner(workspace, ConsoleEvents(console), RichDisplay(console), timeout)
    reports = runner.run(resume=resume, abort=abort, retry=retry)
    for report in reports:
        if report.acted:
            render_outcome(console, report)
    return reports


def summary(operation: str, plan: Plan, serial: int) -> dict[str, Any]:
    """The last line of ``apply --json``: what the apply did and the state serial it left."""
    counts = plan.to_dict()["summary"]
    return {"format_version": EVENTS_JSON_VERSION, "type": "summary", "operation": operation, **counts, "serial": serial}


@command
def apply(
    ctx: typer.Context,
    plan_file: Optional[str] = typer.Argument(None, metavar="[PLANFILE]", help="A plan saved by `plan --out`."),
    var: Optional[List[str]] = VarOption,
    auto_approve: bool = ApproveOption,
    timeout: float = TimeoutOption,
    refresh_only: bool = typer.Option(False, "--refresh-only", help="Accept drift: record the live values in the state."),
    target: Optional[List[str]] = TargetOption,
    as_json: bool = typer.Option(
        False, "--json", help="Print the plan, each change as it starts and ends, and a summary as JSON lines."
    ),
    lock_timeout: str = LockTimeoutOption,
) -> None:
    """Plan, confirm, and carry out the changes; wait until every backend is healthy.

    With PLANFILE: carry out exactly that saved plan, without planning again or asking.
    With --refresh-only: record the live system's values in the state (accept drift); change nothing live.
    With --json (and --auto-approve, or a PLANFILE): one JSON object per line, for CI.
    """
    cli = options(ctx)
    timeout = timeout_s(timeout)
    if as_json and refresh_only:
        raise ServectlError("--json cannot be used with --refresh-only (use `servectl drift --json` to read drift)")
    if as_json and plan_file is None and not auto_approve:
        raise ServectlError("--json asks nothing: pass --auto-approve (or apply a saved plan)")
    if refresh_only:
        if plan_file is not None:
            raise ServectlError("--refresh-only cannot be used with a saved plan")
        _refresh(cli.workspace(var, lock_timeout), auto_approve)
        return
    if plan_file is None:
        workspace = plan_and_apply(cli, var, auto_approve, timeout, destroy=False, targets=target, as_json=as_json,
                                   lock_timeout=lock_timeout)
        if not target and rollouts.declared(workspace.load()):  # a declared rollout runs with the apply
            line = rollouts.failure(drive_rollouts(workspace, err if as_json else out, timeout))
            if line:
                raise ServectlError(line)
        return
    if var:
        raise ServectlError("--var cannot be used with a saved plan: its variables were fixed when it was planned")
    plan, document = cli.workspace(lock_timeout=lock_timeout, notes=err if as_json else out).apply_saved(plan_file, json_events if as_json else ConsoleEvents(out), timeout)
    if as_json:
        json_line(summary("destroy" if plan.destroy else "apply", plan, document.serial))
    elif not plan.has_changes():
        outcomes.saved_plan_empty(out)
    else:
        outcomes.complete(out, "destroy" if plan.destroy else "apply", plan.tally(), document.serial)


def _refresh(workspace: Workspace, auto_approve: bool) -> None:
    """``apply --refresh-only``: show the drift, ask, record the live values in the state."""
    with workspace.locked("refresh"):
        _refresh_locked(workspace, auto_approve)


def _refresh_locked(workspace: Workspace, auto_approve: bool) -> None:
    state, items = workspace.detect_drift()
    render_drift(out, items, refreshing=True)
    if not items:
        return
    if not auto_approve:
        approve("record these live values in the state")
    document, skipped = workspace.accept_drift(state, items)
    outcomes.refresh_complete(out, document.serial, skipped)


@command
def destroy(
    ctx: typer.Context, var: Optional[List[str]] = VarOption, auto_approve: bool = ApproveOption,
    timeout: float = TimeoutOption, lock_timeout: str = LockTimeoutOption,
) -> None:
    """Remove every resource the config created; stop the embedded Ray cluster."""
    plan_and_apply(options(ctx), var, auto_approve, timeout_s(timeout), destroy=True, lock_timeout=lock_timeout)


@command
def rollback(
    ctx: typer.Context,
    to: Optional[int] = typer.Option(None, "--to", help="The serial to return to (`servectl state history`)."),
    auto_approve: bool = ApproveOption,
    timeout: float = TimeoutOption,
    lock_timeout: str = LockTimeoutOption,
) -> None:
    """Plan and apply a return to the previous applied version (or --to SERIAL), with its own code."""
    timeout = timeout_s(timeout)
    workspace = options(ctx).workspace(lock_timeout=lock_timeout)
    with workspace.locked("rollback"), workspace.rollback(to) as planned:
        render_plan(out, planned.plan)
        if not planned.plan.has_changes():
            return
        if not auto_approve:
            approve(f"{planned.operation.split(' to ')[0]} these changes")
        document = workspace.apply(planned, ConsoleEvents(out), timeout)
    outcomes.complete(out, "rollback", planned.plan.tally(), document.serial)


def register(app: typer.Typer) -> None:
    """Add ``apply``, ``destroy`` and ``rollback`` to the root command."""
    app.command()(apply)
    app.command()(destroy)
    app.command()(rollback)
