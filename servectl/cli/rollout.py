"""``rollout``: apply, then move each declared Rollout step by step, gated by its analysis."""
from __future__ import annotations

from typing import List, Optional

import typer

from servectl.cli.apply import drive_rollouts, plan_and_apply
from servectl.cli.common import (
    ApproveOption, LockTimeoutOption, TimeoutOption, VarOption, command, err, options, out, print_json, timeout_s,
)
from servectl.engine import rollout as rollouts
from servectl.errors import ServectlError
from servectl.render.rollout import render_outcome


@command
def rollout(
    ctx: typer.Context,
    var: Optional[List[str]] = VarOption,
    auto_approve: bool = ApproveOption,
    timeout: float = TimeoutOption,
    resume: bool = typer.Option(False, "--resume", help="Go on from a paused rollout to its next step."),
    abort: bool = typer.Option(False, "--abort", help="Send all traffic back to the stable backend; stop the rollout."),
    retry: bool = typer.Option(False, "--retry", help="Start an aborted rollout again from its first step."),
    as_json: bool = typer.Option(False, "--json", help="Print what happened as JSON (progress goes to stderr)."),
    lock_timeout: str = LockTimeoutOption,
) -> None:
    """Apply the config, then move each declared Rollout step by step, gated by its analysis.

    Exit 0 when every rollout completed (or there was nothing to do); 1 when one was aborted or paused by
    its gates, with the reason.
    """
    cli = options(ctx)
    timeout = timeout_s(timeout)
    if sum((resume, abort, retry)) > 1:
        raise ServectlError("give one of --resume, --abort and --retry")
    shown = err if as_json else out
    workspace = cli.workspace(var, lock_timeout, notes=shown)
    if not rollouts.declared(workspace.load()):
        raise ServectlError(
            "the config declares no Rollout(...): add one, e.g. Rollout(endpoint=api, new=v2, steps=[0.1, 0.5, 1.0])"
        )
    if not abort:
        if as_json and not auto_approve and workspace.plan().plan.has_changes():
            raise ServectlError("the config has changes to apply first: pass --auto-approve with --json")
        workspace = plan_and_apply(cli, var, auto_approve, timeout, destroy=False, console=shown,
                                   lock_timeout=lock_timeout)
    reports = drive_rollouts(workspace, shown, timeout, resume=resume, abort=abort, retry=retry)
    if as_json:
        print_json({"format_version": rollouts.ROLLOUT_JSON_VERSION, "rollouts": [report.to_dict() for report in reports]})
    else:
        for report in reports:
            if not report.acted:
                render_outcome(out, report)
    line = rollouts.failure(reports)
    if line:
        raise ServectlError(line)


def register(app: typer.Typer) -> None:
    """Add ``rollout`` to the root command."""
    app.command("rollout")(rollout)
