"""What a rollout shows: a live table on a terminal, one line per step elsewhere."""
from __future__ import annotations

import io

from rich.console import Console

from servectl.engine.analysis import Verdict, Window
from servectl.render.rollout import RichDisplay
from servectl.engine.rollout import StepReport

STEP = StepReport(step=1, weight=0.1, window_s=10.0, new={"requests": 57, "errors": 12, "error_ratio": 0.21, "p99_ms": 9.0},
                  stable={"requests": 512, "errors": 0, "error_ratio": 0.0, "p99_ms": 8.0}, verdict="fail",
                  reasons=["error rate 0.211 (limit 0.01; 12 of 57 failed)"])


def test_logs_get_one_line_per_step_and_no_redraws():
    text = io.StringIO()
    display = RichDisplay(Console(file=text, width=200, force_terminal=False))
    display.moved("api", 1, 3, 0.1, 7)
    display.watching("api", 1, 3, 0.1, 3.0, 10.0, Window(20, 4, 9.0), Window(200, 0, 8.0), Verdict("wait", ["20 requests"]))
    display.judged("api", STEP)
    lines = text.getvalue().splitlines()
    assert lines == [
        "› rollout api: step 1/3, new backend at 10.0% (state serial 7)",
        "  step 1 at 10.0% over 10s: new 57 requests, 12 errors, p99 9 ms; stable 512 requests, p99 8 ms → fail "
        "(error rate 0.211 (limit 0.01; 12 of 57 failed))",
    ]


def test_a_terminal_gets_a_live_table_of_new_against_stable():
    text = io.StringIO()
    display = RichDisplay(Console(file=text, width=120, force_terminal=True, color_system=None))
    display.watching("api", 2, 3, 0.5, 4.0, 10.0, Window(150, 3, 40.0), Window(149, 0, 12.0),
                     Verdict("wait", ["150 requests"]))
    assert display.live is not None
    display.judged("api", STEP)
    assert display.live is None
    drawn = text.getvalue()
    assert "rollout api: step 2/3, new at 50.0%, 4/10s" in drawn
    assert "new" in drawn and "2.00%" in drawn and "40 ms" in drawn and "12 ms" in drawn
