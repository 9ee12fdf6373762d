"""A rollout step's analysis: the new backend's window of metrics against the stable one's, through the gates.

The windows come from two scrapes of servectl's own per-endpoint series
(``ray_servectl_requests_total``, ``…_errors_total``, ``…_request_latency_ms``
with ``role="primary"``), so only requests the endpoint routed count: shadow
copies and other endpoints sharing a backend do not. Nothing here talks to
the network; ``rollout`` scrapes and calls ``evaluate``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from servectl.engine.prometheus import Scrape, delta, quantile
from servectl.engine.status import ENDPOINT_ERRORS, ENDPOINT_LATENCY, ENDPOINT_REQUESTS

PASS, FAIL, WAIT = "pass", "fail", "wait"
# A p99 over the few dozen requests a small step gets is close to their
# maximum, and the histogram's buckets are 1-2-5-10-20-50 ms wide: on a busy
# machine it moves by tens of ms on noise alone. A comparison with the stable
# backend fails only on a difference larger than this.
NOISE_FLOOR_MS = 25.0
# Below this many requests a p99 is simply their slowest one (a cold first
# call to a new replica, a busy moment on the node), so the comparison with
# the stable backend waits for this many; ``max_ms`` applies from the first.
VS_STABLE_MIN_REQUESTS = 100


@dataclass
class Window:
    """One backend's requests on one endpoint between two scrapes."""

    requests: float
    errors: float
    p99_ms: Optional[float]

    @property
    def error_ratio(self) -> Optional[float]:
        """Errors / requests in the window (a fraction); None without requests."""
        return self.errors / self.requests if self.requests else None

    def to_dict(self) -> dict[str, Any]:
        """The window as plain data, with ``error_ratio`` added."""
        return {**asdict(self), "error_ratio": self.error_ratio}


def window(before: Scrape, after: Scrape, endpoint: str, backend: str) -> Window:
    """``backend``'s window on ``endpoint`` between two scrapes: the requests it was routed as primary.

    Requests and errors are growth between the scrapes (none when a counter went back), errors at most requests;
    ``p99_ms`` is the p99 of the latency histogram's growth, None when it has no requests.
    """
    match = {"endpoint": endpoint, "backend": backend, "role": "primary"}
    requests = max(0.0, after.total(ENDPOINT_REQUESTS, **match) - before.total(ENDPOINT_REQUESTS, **match))
    errors = max(0.0, after.total(ENDPOINT_ERRORS, **match) - before.total(ENDPOINT_ERRORS, **match))
    recent = delta(after.buckets(ENDPOINT_LATENCY, **match), before.buckets(ENDPOINT_LATENCY, **match))
    return Window(requests=requests, errors=min(errors, requests), p99_ms=quantile(0.99, recent))


@dataclass
class Verdict:
    """A step's judgement: PASS, FAIL or WAIT (too few requests yet), and the lines that say why."""

    outcome: str  # PASS, FAIL, or WAIT (too few requests to judge yet)
    reasons: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """The reasons as one line, joined by ``; ``."""
        return "; ".join(self.reasons)


def evaluate(gates: list[dict[str, Any]], new: Window, stable: Window, final: bool = True) -> Verdict:
    """Judge ``new`` by ``gates`` (the plain form ``desired`` records: ``{"kind": …, …}``).

    Too few requests is WAIT, never PASS: a backend that got no traffic has
    shown nothing. Before the window ends (``final`` False) only the error
    rate can fail, as soon as the minimum is met, so a failing backend is
    stopped without waiting out the window; latency is judged over the whole
    window, where one slow request weighs less.
    """
    if not gates:
        return Verdict(PASS, ["no analysis declared"])
    least = max([int(g["count"]) for g in gates if g["kind"] == "min_requests"] or [1])
    if new.requests < least:
        return Verdict(WAIT, [f"{new.requests:.0f} of {least} request{'s' if least != 1 else ''} needed to judge"])
    failures: list[str] = []
    passes: list[str] = []
    for gate in gates:
        if gate["kind"] == "error_rate":
            ratio = new.error_ratio or 0.0
            line = f"error rate {ratio:.3f} (limit {gate['max']:g}; {new.errors:.0f} of {new.requests:.0f} failed)"
            (failures if ratio > gate["max"] else passes).append(line)
        elif gate["kind"] == "latency_p99" and final:
            failures += _latency(gate, new, stable, passes)
    passes.append(f"{new.requests:.0f} requests")
    if failures:
        return Verdict(FAIL, failures)
    return Verdict(PASS if final else WAIT, passes)


def _latency(gate: dict[str, Any], new: Window, stable: Window, passes: list[str]) -> list[str]:
    if new.p99_ms is None:
        return []
    failures = []
    if gate.get("max_ms") is not None:
        line = f"p99 {new.p99_ms:.0f} ms (limit {gate['max_ms']:g} ms)"
        (failures if new.p99_ms > gate["max_ms"] else passes).append(line)
    # Compared only when the stable backend served in the same window: at 100 % it has no traffic to compare.
    if gate.get("vs_stable") is not None and stable.p99_ms is not None and stable.requests > 0:
        if new.requests < VS_STABLE_MIN_REQUESTS:
            passes.append(f"p99 not compared with stable's: {new.requests:.0f} of {VS_STABLE_MIN_REQUESTS} requests")
            return failures
        limit = gate["vs_stable"] * stable.p99_ms
        line = f"p99 {new.p99_ms:.0f} ms vs stable's {stable.p99_ms:.0f} ms (limit {gate['vs_stable']:g}×)"
        slower = new.p99_ms > limit and new.p99_ms - stable.p99_ms > NOISE_FLOOR_MS
        (failures if slower else passes).append(line)
    return failures
