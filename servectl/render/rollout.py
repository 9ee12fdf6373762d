"""What `servectl rollout` (and `apply`, when a rollout is declared) shows while traffic moves."""
from __future__ import annotations

from typing import Optional

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from servectl.engine.analysis import FAIL, PASS, Verdict, Window
from servectl.engine.rollout import RolloutReport, StepReport

VERDICT_STYLE = {PASS: "green", FAIL: "red"}


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _ratio(window: Window) -> str:
    return "-" if window.error_ratio is None else f"{window.error_ratio:.2%}"


def _table(endpoint: str, step: int, steps: int, weight: float, elapsed: float, window_s: float,
           new: Window, stable: Window, verdict: Verdict) -> Table:
    table = Table(title=f"rollout {endpoint}: step {step}/{steps}, new at {weight:.1%}, {elapsed:.0f}/{window_s:.0f}s",
                  title_justify="left", box=None, pad_edge=False)
    for column in ("backend", "requests", "errors", "error rate", "p99"):
        table.add_column(column, justify="left" if column == "backend" else "right")
    for label, window in (("new", new), ("stable", stable)):
        table.add_row(label, f"{window.requests:.0f}", f"{window.errors:.0f}", _ratio(window), _ms(window.p99_ms))
    style = VERDICT_STYLE.get(verdict.outcome, "yellow")
    table.caption = f"[{style}]{verdict.outcome}[/{style}]: {escape(verdict.describe())}"
    table.caption_justify = "left"
    return table


class RichDisplay:
    """A live table on a terminal; a line per step elsewhere (CI logs, pipes)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live: Optional[Live] = None

    def moved(self, endpoint: str, step: int, steps: int, weight: float, serial: int) -> None:
        """Print that ``endpoint``'s new backend takes ``weight`` (a fraction) at step ``step`` of ``steps``.

        ``serial`` is the state serial that recorded the move.
        """
        self.console.print(f"[cyan]›[/cyan] rollout {escape(endpoint)}: step {step}/{steps}, new backend at "
                           f"{weight:.1%} (state serial {serial})")

    def watching(self, endpoint: str, step: int, steps: int, weight: float, elapsed: float, window_s: float,
                 new: Window, stable: Window, verdict: Verdict) -> None:
        """Draw or redraw the live table of the step's window: its requests, errors and p99 on both sides, the verdict.

        ``elapsed`` and ``window_s`` are seconds. On a terminal only; elsewhere the step shows when ``judged``.
        """
        if not self.console.is_terminal:
            return
        table = _table(endpoint, step, steps, weight, elapsed, window_s, new, stable, verdict)
        if self.live is None:
            self.live = Live(table, console=self.console, refresh_per_second=4, transient=True)
            self.live.start()
        else:
            self.live.update(table)

    def judged(self, endpoint: str, report: StepReport) -> None:
        """Close the live table and print the step's line: both sides' requests and p99, new errors, the verdict, why."""
        if self.live is not None:
            self.live.stop()
            self.live = None
        new, stable = report.new, report.stable
        style = VERDICT_STYLE.get(report.verdict, "yellow")
        self.console.print(
            f"  step {report.step} at {report.weight:.1%} over {report.window_s:.0f}s: new {new['requests']:.0f} "
            f"requests, {new['errors']:.0f} errors, p99 {_ms(new['p99_ms'])}; stable {stable['requests']:.0f} "
            f"requests, p99 {_ms(stable['p99_ms'])} → [{style}]{report.verdict}[/{style}] "
            f"({escape('; '.join(report.reasons))})"
        )


def render_outcome(console: Console, report: RolloutReport) -> None:
    """Print how the rollout ended: completed, aborted (why), paused (at what weight, how to go on) or its status."""
    where = f"rollout {escape(report.endpoint)} ({escape(report.stable)} → {escape(report.new)})"
    if report.outcome == "completed":
        console.print(f"[green bold]Rollout complete![/green bold] {where}: {escape(report.new)} takes all the "
                      f"traffic; state serial {report.state_serial}.")
    elif report.outcome == "aborted":
        console.print(f"[red bold]Rollout aborted:[/red bold] {where}: {escape(report.reason)}; all traffic is on "
                      f"{escape(report.stable)}.")
    elif report.outcome == "paused":
        console.print(f"[yellow bold]Rollout paused[/yellow bold] at {report.weight:.1%}: {where}: "
                      f"{escape(report.reason)}. `servectl rollout --resume` goes on, `--abort` goes back.")
    else:
        console.print(f"{where}: {escape(report.outcome)}.")
