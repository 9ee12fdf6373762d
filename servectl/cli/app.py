"""The root ``servectl`` command: its options (in ``ctx.obj``), its command groups, and the entry point."""
from __future__ import annotations

import signal
import sys
from typing import Any

import typer

from servectl.cli import apply, observe, plan, rollout, state
from servectl.cli.common import CliContext
from servectl.sensitive import MaskedStream

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Terraform-style plan/apply for model serving on Ray Serve.",
    pretty_exceptions_enable=False,
)


@app.callback()
def main_options(
    ctx: typer.Context,
    config_dir: str = typer.Option(".", "-C", "--config-dir", help="Config directory holding main.py."),
) -> None:
    """Root options, parsed before any command: ``-C/--config-dir``, handed to every command in ``ctx.obj``."""
    ctx.obj = CliContext(config_dir=config_dir)


# In the order `servectl --help` lists them: the workflow first, then what reads, then the state.
for group in (plan, apply, rollout, observe, state):
    group.register(app)


def main() -> None:
    """The ``servectl`` entry point: every text it writes passes through the sensitive-value mask."""
    sys.stdout = MaskedStream(sys.stdout)  # type: ignore[assignment]
    sys.stderr = MaskedStream(sys.stderr)  # type: ignore[assignment]
    signal.signal(signal.SIGTERM, _terminated)  # a CI runner's cancel, `kill`: as Ctrl-C, never a stack dump
    app()


def _terminated(signum: int, frame: Any) -> None:
    """SIGTERM ends a command the way SIGINT does: the state keeps every finished change, the lock is released."""
    raise KeyboardInterrupt
