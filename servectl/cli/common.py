"""What every command shares: the consoles, the root options in ``ctx.obj``, error handling, common flags."""
from __future__ import annotations

import functools
import json
import os
import re
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console

from servectl.engine.workspace import Workspace
from servectl.errors import ConfigError, ServectlError
from servectl.render import outcomes
from servectl.sensitive import mask

# No emoji codes and no highlighting: rich must print what it is given, or a sensitive value rewritten on the way
# (":x:" in it, say) would no longer be recognised by the mask on stdout/stderr.
out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

MAX_TIMEOUT_S = 86_400.0
VarOption = typer.Option(None, "--var", help="Set a variable: NAME=VALUE (repeatable).")
TargetOption = typer.Option(
    None, "--target", help="Plan only this resource (and what it needs), e.g. backend.NAME (repeatable; exceptional use)."
)
ApproveOption = typer.Option(False, "--auto-approve", help="Skip the confirmation.")
TimeoutOption = typer.Option(300.0, "--timeout", help="Seconds to wait for each change to become healthy (1 to 86400).")
LockTimeoutOption = typer.Option(
    "0s", "--lock-timeout", metavar="DURATION",
    help="Wait this long for a state lock another operation holds, e.g. 30s, 5m, 1h30m (0s: fail at once; at most 24h).",
)
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)(ms|h|m|s))")  # "ms" before "m": 250ms is not 250m + s
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


@dataclass
class CliContext:
    """The root options, parsed before any command and handed to it in ``ctx.obj``: ``config_dir`` (``-C``)."""

    config_dir: str = "."

    def workspace(self, var: Optional[List[str]] = None, lock_timeout: str = "0s", notes: Optional[Console] = None) -> Workspace:
        """The workspace of the config directory, with ``--var NAME=VALUE`` pairs as its variables and
        ``--lock-timeout``'s DURATION (checked: ``lock_timeout_s``); a wait for a lock is said on ``notes``
        (stdout, as Terraform's "Acquiring state lock"; stderr where stdout carries JSON)."""
        shown = notes or out
        return Workspace(self.config_dir, variables(var), lock_timeout_s(lock_timeout),
                         lambda holder: outcomes.waiting_for_lock(shown, mask(holder)))


def options(ctx: typer.Context) -> CliContext:
    """The root options of the running command (``ctx.obj``; defaults when a test calls a command alone)."""
    if not isinstance(ctx.obj, CliContext):
        ctx.obj = CliContext()
    return ctx.obj


def variables(pairs: Optional[List[str]]) -> dict[str, str]:
    """``--var NAME=VALUE`` pairs as a dict. Raises ConfigError on a pair without ``=`` or a name."""
    found = {}
    for pair in pairs or []:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--var {pair!r}: expected NAME=VALUE")
        found[name.strip()] = raw
    return found


def command(func: Callable[..., Any]) -> Callable[..., Any]:
    """Every user mistake becomes one red line and exit 1; never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except ServectlError as error:
            outcomes.error(err, mask(str(error)))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            outcomes.interrupted(err)
            raise typer.Exit(1) from None
        except Exception as error:  # noqa: BLE001 - a bug in servectl: still one line unless asked
            if os.environ.get("SERVECTL_DEBUG"):
                traceback.print_exc()
            outcomes.internal_error(err, type(error).__name__, mask(str(error)))
            raise typer.Exit(1) from None

    return wrapper


def bounded(flag: str, value: float, low: float, high: float) -> float:
    """``value`` if ``low <= value <= high`` (and a number); ServectlError naming ``flag`` and the range otherwise."""
    if not low <= value <= high:  # NaN fails this too
        raise ServectlError(f"{flag} {value:g} is out of range: give {low:g} to {high:g}")
    return value


def timeout_s(value: float) -> float:
    """``--timeout`` checked: 1 to 86400 seconds."""
    return bounded("--timeout", value, 1, MAX_TIMEOUT_S)


def lock_timeout_s(text: str) -> float:
    """``--lock-timeout``'s DURATION in seconds, written as Terraform's ``-lock-timeout`` (Go's durations: ``30s``,
    ``5m``, ``1h30m``, ``250ms``; a bare ``0``), 0 to 24 h. Raises ServectlError naming the flag otherwise."""
    text = text.strip()
    if text == "0":
        return 0.0
    if not text or _DURATION.sub("", text) != "":
        raise ServectlError(f"--lock-timeout {text!r}: expected a duration such as 30s, 5m or 1h30m (units h, m, s, ms)")
    seconds = sum(float(amount) * _UNIT_S[unit] for amount, unit in _DURATION.findall(text))
    if seconds > MAX_TIMEOUT_S:
        raise ServectlError(f"--lock-timeout {text} is out of range: give 0s to 24h")
    return seconds


def approve(what: str) -> None:
    """Ask for ``yes`` (Terraform's confirmation); ServectlError when anything else (or nothing) is typed."""
    outcomes.approval_prompt(out, what)
    try:
        answer = input("  Enter a value: ")
    except EOFError:
        answer = ""
    if answer.strip() != "yes":
        raise ServectlError(f"{what.split()[0]} cancelled: not approved (type 'yes', or pass --auto-approve)")


def print_json(body: Any) -> None:
    """Machine output: the JSON text as is (no pretty-printer re-parsing it: a 10,000-change plan stays fast),
    through the same sensitive-value mask as everything else."""
    sys.stdout.write(json.dumps(body, indent=2) + "\n")
    sys.stdout.flush()


def warn_targeting(targets: Optional[List[str]]) -> None:
    """Terraform's ``-target`` warning on stderr, when targets are given."""
    if targets:
        outcomes.targeting_warning(err, targets)
