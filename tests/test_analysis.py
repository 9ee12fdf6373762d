"""Rollout gates as pure functions: windows from two scrapes, and the verdicts they give."""
from __future__ import annotations

from servectl.engine.analysis import FAIL, PASS, WAIT, Window, evaluate, window
from servectl.engine.prometheus import Scrape, parse

GATES = [
    {"kind": "error_rate", "max": 0.01},
    {"kind": "latency_p99", "max_ms": 250.0, "vs_stable": 1.2},
    {"kind": "min_requests", "count": 100},
]


def scrape(requests: dict[str, float], errors: dict[str, float], slow: dict[str, float]) -> Scrape:
    """servectl's per-endpoint series for two backends; ``slow`` requests took 300-500 ms, the rest under 10 ms."""
    lines = []
    for backend, count in requests.items():
        labels = f'endpoint="api",backend="{backend}",role="primary"'
        lines.append(f"ray_servectl_requests_total{{{labels}}} {count}")
        lines.append(f"ray_servectl_errors_total{{{labels}}} {errors.get(backend, 0)}")
        lines.append(f'ray_servectl_requests_total{{endpoint="other",backend="{backend}",role="primary"}} 999')
        fast = count - slow.get(backend, 0)
        for bound, seen in (("10.0", fast), ("200.0", fast), ("500.0", count), ("+Inf", count)):
            lines.append(f'ray_servectl_request_latency_ms_bucket{{{labels},le="{bound}"}} {seen}')
    return Scrape(parse("\n".join(lines)))


def test_a_window_counts_only_the_endpoints_primary_requests_between_the_scrapes():
    before = scrape({"new": 10, "stable": 100}, {"new": 1}, {})
    after = scrape({"new": 210, "stable": 1100}, {"new": 5}, {"new": 3})
    new = window(before, after, "api", "new")
    assert (new.requests, new.errors) == (200, 4)
    assert new.error_ratio == 0.02
    assert 10 < new.p99_ms <= 500  # the 3 slow ones are 1.5 % of the window: p99 falls among them


def test_too_few_requests_wait_and_never_pass():
    verdict = evaluate(GATES, Window(99, 0, 5.0), Window(1000, 0, 5.0))
    assert verdict.outcome == WAIT and verdict.reasons == ["99 of 100 requests needed to judge"]
    assert evaluate(GATES[:1], Window(0, 0, None), Window(10, 0, 5.0)).outcome == WAIT
    assert evaluate([], Window(0, 0, None), Window(10, 0, 5.0)).outcome == PASS  # nothing declared to judge


def test_error_rate_fails_as_soon_as_judged_latency_only_at_the_window_end():
    failing = evaluate(GATES, Window(200, 40, 5.0), Window(1000, 0, 5.0), final=False)
    assert failing.outcome == FAIL and failing.reasons[0].startswith("error rate 0.200 (limit 0.01; 40 of 200 failed)")
    slow = Window(200, 0, 400.0)
    assert evaluate(GATES, slow, Window(1000, 0, 5.0), final=False).outcome == WAIT  # not judged mid-window
    verdict = evaluate(GATES, slow, Window(1000, 0, 5.0))
    assert verdict.outcome == FAIL
    assert verdict.reasons == ["p99 400 ms (limit 250 ms)", "p99 400 ms vs stable's 5 ms (limit 1.2×)"]


def test_latency_against_stable_ignores_noise_and_a_stable_without_traffic():
    assert evaluate(GATES, Window(200, 0, 30.0), Window(1000, 0, 8.0)).outcome == PASS  # 22 ms apart: noise
    assert evaluate(GATES, Window(200, 0, 120.0), Window(1000, 0, 60.0)).outcome == FAIL  # 2× and 60 ms slower
    assert evaluate(GATES, Window(200, 0, 120.0), Window(0, 0, None)).outcome == PASS  # at 100 %: nothing to compare
    few = evaluate([GATES[1]], Window(40, 0, 91.0), Window(400, 0, 31.0))  # a p99 of 40 requests is their slowest
    assert few.outcome == PASS and "p99 not compared with stable's: 40 of 100 requests" in few.reasons
    verdict = evaluate(GATES, Window(200, 1, 20.0), Window(1000, 0, 20.0))
    assert verdict.outcome == PASS and verdict.reasons[-1] == "200 requests"
