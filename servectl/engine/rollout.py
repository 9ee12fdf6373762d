"""Progressive delivery: a declared ``Rollout`` moves an endpoint's traffic step by step, gated by metrics.

Where a rollout stands is part of the endpoint's attributes (``rollout``:
status, weight, reason), so every step is an ordinary in-place endpoint
update: a state serial with a history entry, seen by `plan`, `history` and
`rollback`. The config says where a rollout starts (``status: pending``,
all traffic on the stable backend); ``resolve`` carries the recorded
position over from the state, so planning an unchanged config mid-rollout
changes nothing. A changed candidate (the new backend's code, init
arguments or resources: what restarts it) starts over.

``RolloutRunner`` drives it under the state lock: move to the next weight
(apply), watch the window (``pause_s``) through ``analysis``, then go on,
pause, or abort (all traffic back to stable). The state is true after every
move, so a runner killed anywhere resumes on the next command (after
`force-unlock`): it re-watches the step it was in.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from servectl.engine.analysis import FAIL, PASS, WAIT, Verdict, Window, evaluate, window
from servectl.model.desired import ENDPOINT, address_of
from servectl.planning.rollout_position import ABORTED, COMPLETED, PAUSED, PENDING, PROGRESSING, declared
from servectl.errors import ServectlError
from servectl.engine.events import Emit
from servectl.engine.status import scrape_all

if TYPE_CHECKING:
    from servectl.engine.workspace import Workspace
    from servectl.providers.base import Provider

ROLLOUT_JSON_VERSION = 1  # of `rollout --json`; see docs/reference/json.md
TICK_S = 1.0


class RolloutError(ServectlError):
    """A rollout that could not finish: aborted by its gates, or paused for a person."""


@dataclass
class StepReport:
    """One watched step: its 1-based index, the new backend's weight, and how long it was watched (seconds).

    ``new`` and ``stable`` are the two backends' windows (``Window.to_dict``); ``verdict`` is pass, fail or wait.
    """

    step: int  # 1-based index into steps
    weight: float
    window_s: float
    new: dict[str, Any]
    stable: dict[str, Any]
    verdict: str
    reasons: list[str]


@dataclass
class RolloutReport:
    """What one run did to one endpoint's rollout: where it left it and why, and the state serial after.

    ``steps`` are the steps this run watched; ``failed`` means it stopped the rollout short (the command exits 1),
    ``acted`` that it moved it at all.
    """

    endpoint: str
    stable: str
    new: str
    outcome: str  # completed, aborted, paused, or the status it was left in (nothing to do)
    reason: str = ""
    weight: float = 0.0
    state_serial: int = 0
    steps: list[StepReport] = field(default_factory=list)
    failed: bool = False  # this run stopped it short (its gates, or too few requests): the command exits 1
    acted: bool = False  # this run moved it (a step, a pause, an abort, the completion)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data, its steps included (``rollout --json``)."""
        return asdict(self)


class Display(Protocol):
    """What the runner shows while it works (the CLI draws it with rich; tests may collect it)."""

    def moved(self, endpoint: str, step: int, steps: int, weight: float, serial: int) -> None:
        """Traffic moved: step ``step`` of ``steps`` gives the new backend ``weight``, at state serial ``serial``."""
        ...

    def watching(
        self, endpoint: str, step: int, steps: int, weight: float, elapsed: float, window_s: float,
        new: Window, stable: Window, verdict: Verdict,
    ) -> None:
        """One tick of a step's window: ``elapsed`` of ``window_s`` seconds, both windows and the verdict so far."""
        ...

    def judged(self, endpoint: str, report: StepReport) -> None:
        """A step was judged: ``report`` holds its verdict and reasons."""
        ...


class RolloutRunner:
    """Drives the declared rollouts of one workspace, under its state lock."""

    def __init__(
        self,
        workspace: "Workspace",
        emit: "Emit",
        display: Display,
        timeout_s: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.workspace = workspace
        self.emit = emit
        self.display = display
        self.timeout_s = timeout_s
        self.sleep = sleep

    def run(self, resume: bool = False, abort: bool = False, retry: bool = False) -> list[RolloutReport]:
        """Drive every declared rollout once, under the ``rollout`` state lock; one report per rollout.

        ``resume`` goes on past a paused step, ``abort`` sends all traffic back to the stable backend, ``retry`` starts
        an aborted rollout over. Raises RolloutError when a rollout with gates has no metrics endpoint to judge them by;
        LockError when the state is locked by another; errors from plan and apply propagate. The lock is released
        however the run ends.
        """
        with self.workspace.locked("rollout"):
            self._provider: Optional["Provider"] = None
            return [self._drive(endpoint, rollout, resume=resume, abort=abort, retry=retry)
                    for endpoint, rollout in declared(self.workspace.positioned())]

    # -- one rollout ---------------------------------------------------------------------------------------------

    def _drive(self, endpoint: str, rollout: dict[str, Any], resume: bool, abort: bool, retry: bool) -> RolloutReport:
        report = RolloutReport(endpoint=endpoint, stable=rollout["stable"], new=rollout["new"], outcome=rollout["status"],
                               reason=rollout.get("reason", ""), weight=rollout["weight"])
        steps = [float(step) for step in rollout["steps"]]
        status, weight = rollout["status"], float(rollout["weight"])
        if abort:
            if status in (PENDING, PROGRESSING, PAUSED):
                return self._abort(report, "aborted by hand (`servectl rollout --abort`)", failed=False)
            return self._left(report)
        if status == ABORTED and retry:
            status, weight = PENDING, 0.0
        if status == PAUSED and not resume or status in (COMPLETED, ABORTED):
            return self._left(report)
        if rollout["analysis"] and not self._metrics_urls():
            raise RolloutError(
                f"rollout {endpoint}: this provider gives servectl no metrics endpoint to judge the gates by (the AWS "
                "provider reads no node metrics yet); nothing was moved. Declare the rollout without analysis to step "
                "by time alone, or run it on a LocalRay cluster"
            )
        watch = status == PROGRESSING  # a runner that stopped mid-window watches that step again
        if status == PAUSED:  # --resume: a person judged this step; go on to the next
            watch = False
        if status == PENDING:
            weight = 0.0
        while True:
            if watch:
                index = _index(steps, weight)
                step = self._watch(endpoint, rollout, index + 1, len(steps), weight)
                report.steps.append(step)
                if step.verdict == FAIL and rollout["on_failure"] == "rollback":
                    return self._abort(report, f"step {index + 1} ({weight:.1%}): {'; '.join(step.reasons)}")
                if step.verdict != PASS:
                    why = "; ".join(step.reasons)
                    reason = (f"step {index + 1} ({weight:.1%}) failed its gates: {why}" if step.verdict == FAIL
                              else f"step {index + 1} ({weight:.1%}) could not be judged: {why}")
                    return self._stop(report, PAUSED, weight, reason)
            following = [step for step in steps if step > weight + 1e-9]
            weight = following[0] if following else 1.0  # steps edited below the weight it reached: finish
            index = _index(steps, weight)
            if weight >= 1.0:
                self._move(endpoint, COMPLETED, 1.0, "", f"rollout {endpoint}: {rollout['new']} at 100% (completed)")
                self.display.moved(endpoint, index + 1, len(steps), 1.0, self._serial())
                report.outcome, report.weight, report.reason, report.acted = COMPLETED, 1.0, "", True
                report.state_serial = self._serial()
                return report
            self._move(endpoint, PROGRESSING, weight, "",
                       f"rollout {endpoint}: {rollout['new']} at {weight:.1%} (step {index + 1} of {len(steps)})")
            self.display.moved(endpoint, index + 1, len(steps), weight, self._serial())
            report.acted, report.outcome, report.weight = True, PROGRESSING, weight
            watch = True

    def _watch(self, endpoint: str, rollout: dict[str, Any], step: int, steps: int, weight: float) -> StepReport:
        """Scrape at the start of the window and every tick; judge at ``pause_s`` (or, short of requests, as soon as
        there are enough, up to ``max_wait_s``); stop early on a failed error-rate gate."""
        urls = self._metrics_urls()
        before, _ = scrape_all(urls)
        started = time.monotonic()
        window_s = float(rollout["pause_s"])
        limit_s = max(window_s, float(rollout.get("max_wait_s", 3 * window_s)))
        gates = list(rollout["analysis"])
        while True:
            elapsed = time.monotonic() - started
            self.sleep(min(TICK_S, max(0.0, window_s - elapsed)) if elapsed < window_s else TICK_S)
            elapsed = time.monotonic() - started
            after, _ = scrape_all(urls)
            new = window(before, after, endpoint, rollout["new"])
            stable = window(before, after, endpoint, rollout["stable"])
            verdict = evaluate(gates, new, stable, final=elapsed >= window_s)
            final = verdict.outcome != WAIT and elapsed >= window_s or elapsed >= limit_s
            self.display.watching(endpoint, step, steps, weight, elapsed, window_s, new, stable, verdict)
            if verdict.outcome == FAIL or final:
                result = StepReport(step=step, weight=weight, window_s=round(elapsed, 1), new=new.to_dict(),
                                    stable=stable.to_dict(), verdict=verdict.outcome, reasons=verdict.reasons)
                self.display.judged(endpoint, result)
                return result

    # -- moves: each one an in-place endpoint update, a state serial and a history entry -------------------------

    def _metrics_urls(self) -> list[str]:
        """Where the gates' metrics are scraped: read from the provider once per run (no plan needed for it)."""
        if self._provider is None:
            self._provider = self.workspace.provider()
        return list(self._provider.observe().metrics_urls)

    def _move(self, endpoint: str, status: str, weight: float, reason: str, operation: str) -> None:
        address = address_of(ENDPOINT, endpoint)
        planned = self.workspace.plan(
            targets=[address], rollout_moves={address: {"status": status, "weight": weight, "reason": reason}}
        )
        planned.operation = operation
        if planned.plan.has_changes():
            self.workspace.apply_locked(planned, self.emit, self.timeout_s)

    def _serial(self) -> int:
        state = self.workspace.read_state()
        return state.serial if state else 0

    def _abort(self, report: RolloutReport, reason: str, failed: bool = True) -> RolloutReport:
        self._move(report.endpoint, ABORTED, 0.0, reason,
                   f"rollout {report.endpoint}: aborted, all traffic back on {report.stable}")
        report.outcome, report.reason, report.weight, report.state_serial = ABORTED, reason, 0.0, self._serial()
        report.failed, report.acted = failed, True
        return report

    def _stop(self, report: RolloutReport, status: str, weight: float, reason: str) -> RolloutReport:
        self._move(report.endpoint, status, weight, reason, f"rollout {report.endpoint}: {status} at {weight:.1%}")
        report.outcome, report.reason, report.weight, report.state_serial = status, reason, weight, self._serial()
        report.failed, report.acted = True, True
        return report

    def _left(self, report: RolloutReport) -> RolloutReport:
        report.state_serial = self._serial()
        return report


def _index(steps: list[float], weight: float) -> int:
    """The step a weight belongs to: the first step at or above it."""
    for index, step in enumerate(steps):
        if step >= weight - 1e-9:
            return index
    return len(steps) - 1


def failure(reports: list[RolloutReport]) -> Optional[str]:
    """The one line a command exits 1 with, when a rollout it drove stopped short."""
    for report in reports:
        if report.failed and report.outcome == ABORTED:
            return (f"rollout of {report.new} on endpoint {report.endpoint} aborted at {report.reason}; all traffic is "
                    f"back on {report.stable} (state serial {report.state_serial})")
        if report.failed:
            return (f"rollout of {report.new} on endpoint {report.endpoint} paused: {report.reason}; "
                    "`servectl rollout --resume` goes on to the next step, `servectl rollout --abort` sends all "
                    f"traffic back to {report.stable}")
    return None
