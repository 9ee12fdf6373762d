"""``validate`` and ``plan``: read the config (and the cluster), change nothing."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import List, Optional

import typer

from servectl.cli.common import TargetOption, VarOption, command, options, out, print_json, variables, warn_targeting
from servectl.engine.drift import DriftReport
from servectl.errors import ConfigError, ServectlError
from servectl.loading.diagnostics import diagnose
from servectl.loading.loader import load_config
from servectl.render import outcomes
from servectl.render.plan import render_drift, render_plan
from servectl.sensitive import mask, redact

VALIDATE_JSON_VERSION = 1  # of `validate --json`; see docs/reference/json.md


@command
def validate(
    ctx: typer.Context, var: Optional[List[str]] = VarOption,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON: valid or not, and the error's file, line and address."),
) -> None:
    """Load and check the config without contacting any cluster.

    With --json (Terraform's `validate -json`): one JSON object on stdout, exit 1 when the config is invalid.
    """
    if not as_json:
        desired = load_config(options(ctx).config_dir, variables(var))
        outcomes.valid(out, len(desired.backends()), len(desired.endpoints()))
        return
    try:
        with contextlib.redirect_stdout(sys.stderr):  # what the config itself prints: stdout carries the JSON
            desired = load_config(options(ctx).config_dir, variables(var))
    except ConfigError as err:
        print_json({"format_version": VALIDATE_JSON_VERSION, "valid": False, "error_count": 1,
                    "diagnostics": [diagnose(mask(str(err))).to_dict()]})
        raise typer.Exit(1) from None
    print_json({"format_version": VALIDATE_JSON_VERSION, "valid": True, "error_count": 0, "diagnostics": [],
                "backends": len(desired.backends()), "endpoints": len(desired.endpoints())})


@command
def plan(
    ctx: typer.Context,
    var: Optional[List[str]] = VarOption,
    detailed_exitcode: bool = typer.Option(False, "--detailed-exitcode", help="Exit 2 when there are changes."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    out_path: Optional[str] = typer.Option(None, "--out", help="Save the plan to apply later with `apply FILE`."),
    refresh_only: bool = typer.Option(False, "--refresh-only", help="Show only drift: how the live system differs from the state."),
    target: Optional[List[str]] = TargetOption,
    destroy: bool = typer.Option(
        False, "--destroy", help="Plan removing everything the state holds (save it with --out; `destroy` applies it at once).",
    ),
) -> None:
    """Show what apply would change, and where the replicas would go.

    With --destroy: what `destroy` would remove (Terraform's `plan -destroy`).
    """
    if out_path is not None:
        check_plan_path(out_path)
    workspace = options(ctx).workspace(var)
    if destroy and (refresh_only or target):
        raise ServectlError(f"--destroy cannot be used with {'--refresh-only' if refresh_only else '--target'}")
    if refresh_only:
        if out_path:
            raise ServectlError("--out cannot be used with --refresh-only")
        _, items = workspace.detect_drift()
        if as_json:
            print_json(DriftReport(drift=items).to_json())
        else:
            render_drift(out, items, refreshing=True)
        if detailed_exitcode and items:
            raise typer.Exit(2)
        return
    planned = workspace.plan(destroy=destroy, targets=target)
    warn_targeting(target)  # once the targets are known to exist: a bad one is the only line
    if as_json:
        print_json(redact(planned.plan.to_dict()))
    else:
        render_plan(out, planned.plan)
        if not destroy:
            outcomes.rollout_notes(out, planned.desired)
    if out_path:
        workspace.save_plan(planned, out_path)
        if not as_json:
            outcomes.plan_saved(out, out_path, workspace.config_dir)
    if detailed_exitcode and planned.has_work():
        raise typer.Exit(2)


def check_plan_path(path: str) -> None:
    """``--out PATH`` checked before anything is planned: a file name, in a directory that exists, not a directory
    itself. Raises ServectlError (one line) otherwise."""
    if not path.strip():
        raise ServectlError("--out needs a file name, e.g. --out prod.plan")
    if os.path.isdir(path):
        raise ServectlError(f"--out {path}: is a directory; give a file name in it")
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise ServectlError(f"--out {path}: no such directory {os.path.dirname(os.path.abspath(path))}")


def register(app: typer.Typer) -> None:
    """Add ``validate`` and ``plan`` to the root command."""
    app.command()(validate)
    app.command()(plan)
