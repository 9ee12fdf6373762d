"""`servectl status`: what runs now, per endpoint and backend, read from Serve and the metrics.

Replica counts and health come from the provider's live view; request and
error rates and latency percentiles from two scrapes of every node's metrics
endpoint, ``window_s`` apart (Ray Serve's ``ray_serve_deployment_*`` series
per backend; servectl's ``ray_servectl_*`` per endpoint). Traffic weights and
targets come from the state: what was applied.
"""
from __future__ import annotations

import time
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from servectl.model.desired import BACKEND, ENDPOINT, initial_replicas, replica_range
from servectl.errors import ProviderError
from servectl.engine.prometheus import Scrape, delta, parse, quantile
from servectl.providers.base import LiveView, Provider
from servectl.state.document import StateDocument

REQUESTS = "ray_serve_deployment_request_counter_total"
ERRORS = "ray_serve_deployment_error_counter_total"
LATENCY = "ray_serve_deployment_processing_latency_ms"
ENDPOINT_REQUESTS = "ray_servectl_requests_total"
ENDPOINT_ERRORS = "ray_servectl_errors_total"
ENDPOINT_LATENCY = "ray_servectl_request_latency_ms"
SHADOW_SENT = "ray_servectl_shadow_sent_total"
STATUS_JSON_VERSION = 1  # of `status --json`; see docs/reference/json.md


@dataclass
class Traffic:
    """Requests, errors and latency of one backend or endpoint.

    Rate and error ratio are over the window when one was measured (without one, the error ratio is lifetime);
    totals count since the counters started; percentiles cover the window when it saw requests, otherwise the
    replicas' lifetime (``latency_scope``).
    """

    requests_per_s: Optional[float]  # None: no window was measured
    error_ratio: Optional[float]  # errors / requests in the window; None without requests
    p50_ms: Optional[float]
    p99_ms: Optional[float]
    requests_total: float
    errors_total: float
    latency_scope: str  # "window" (requests in the window) or "lifetime" (since the replicas started)


@dataclass
class BackendStatus:
    """One backend as `status` shows it: replicas wanted and running, Serve's health and message, its traffic."""

    name: str
    target: int  # num_replicas, or autoscaling's min (initial) count
    running: int
    health: str
    traffic: Traffic
    message: str = ""
    target_max: Optional[int] = None  # above target when the backend autoscales


@dataclass
class EndpointStatus:
    """One endpoint as `status` shows it: its route, the applied traffic weights and shadow proportions.

    ``traffic`` counts the requests it routed as primary; ``shadow_copies_total`` the shadow copies it sent.
    """

    name: str
    route: Optional[str]
    weights: dict[str, float]
    shadow: dict[str, float]
    traffic: Traffic
    shadow_copies_total: float = 0.0
    rollout: Optional[dict[str, Any]] = None  # {stable, new, status, weight, reason} when one is declared


@dataclass
class StatusReport:
    """Everything `status` shows: each backend and endpoint, the window (seconds) and the nodes scraped.

    ``scrape_errors`` has one ``url: error`` line per failed scrape; the report is built from the rest.
    """

    window_s: float
    nodes_scraped: int
    backends: list[BackendStatus] = field(default_factory=list)
    endpoints: list[EndpointStatus] = field(default_factory=list)
    scrape_errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The report for `status --json`: ``format_version`` plus its fields as plain data."""
        return {"format_version": STATUS_JSON_VERSION, **asdict(self)}


Fetch = Callable[[str], str]


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode("utf-8", "replace")


def scrape_all(urls: list[str], fetch: Fetch = _fetch) -> tuple[Scrape, list[str]]:
    """Fetch and parse every metrics URL into one Scrape.

    Returns it with one ``url: error`` line per fetch that raised OSError; those URLs add no samples.
    """
    samples, errors = [], []
    for url in urls:
        try:
            samples += parse(fetch(url))
        except OSError as err:
            errors.append(f"{url}: {err}")
    return Scrape(samples), errors


def _traffic(
    before: Optional[Scrape], after: Scrape, window_s: float, counters: tuple[str, str], latency: str,
    errors_apart: bool, **match: str,
) -> Traffic:
    """``errors_apart``: the request counter counts only successes (Ray Serve's does), so requests = both."""
    requests_name, errors_name = counters

    def counts(scrape: Scrape) -> tuple[float, float]:
        requests, errors = scrape.total(requests_name, **match), scrape.total(errors_name, **match)
        return (requests + errors if errors_apart else requests), errors

    total_requests, total_errors = counts(after)
    rate = error_ratio = None
    buckets = after.buckets(latency, **match)
    scope = "lifetime"
    if before is not None and window_s > 0:
        requests_before, errors_before = counts(before)
        grew = max(0.0, total_requests - requests_before)
        failed = max(0.0, total_errors - errors_before)
        rate = grew / window_s
        error_ratio = failed / grew if grew else None
        recent = delta(buckets, before.buckets(latency, **match))
        if recent and max(recent.values()) > 0:
            buckets, scope = recent, "window"
    elif total_requests:
        error_ratio = total_errors / total_requests
    return Traffic(
        rate, error_ratio, quantile(0.5, buckets), quantile(0.99, buckets), total_requests, total_errors, scope
    )


def collect(
    state: Optional[StateDocument],
    provider: Provider,
    window_s: float,
    fetch: Fetch = _fetch,
    sleep: Callable[[float], None] = time.sleep,
) -> StatusReport:
    """Build the status report: what runs now (the provider's live view) and its traffic.

    Scrapes every node's metrics twice, ``window_s`` seconds apart (once, for lifetime figures, when it is 0), and
    reads targets, weights and rollouts from ``state``. Raises ProviderError when the state is empty.
    """
    if state is None or not state.resources:
        raise ProviderError("nothing is applied here: the state is empty (run `servectl apply`)")
    live: LiveView = provider.observe()
    before = None
    errors: list[str] = []
    if window_s > 0:
        before, errors = scrape_all(live.metrics_urls, fetch)
        sleep(window_s)
    after, more = scrape_all(live.metrics_urls, fetch)
    report = StatusReport(window_s=window_s, nodes_scraped=len(live.metrics_urls))
    report.scrape_errors = sorted(set(errors + more))
    for resource in sorted(state.resources.values(), key=lambda r: (r.kind, r.name)):
        if resource.kind == BACKEND:
            seen = live.backends.get(resource.name)
            traffic = _traffic(before, after, window_s, (REQUESTS, ERRORS), LATENCY, True, deployment=resource.name)
            report.backends.append(
                BackendStatus(
                    name=resource.name,
                    target=initial_replicas(resource.attributes),
                    target_max=replica_range(resource.attributes)[1],
                    running=seen.running if seen else 0,
                    health=(seen.status if seen else "MISSING"),
                    traffic=traffic,
                    message=(seen.message if seen and seen.status not in ("HEALTHY", "RUNNING") else ""),
                )
            )
        elif resource.kind == ENDPOINT:
            traffic = _traffic(
                before, after, window_s, (ENDPOINT_REQUESTS, ENDPOINT_ERRORS), ENDPOINT_LATENCY, False,
                endpoint=resource.name, role="primary",
            )
            report.endpoints.append(
                EndpointStatus(
                    name=resource.name,
                    route=resource.attributes.get("route"),
                    weights=dict(resource.attributes.get("traffic") or {}),
                    shadow=dict(resource.attributes.get("shadow") or {}),
                    traffic=traffic,
                    shadow_copies_total=after.total(SHADOW_SENT, endpoint=resource.name),
                    rollout=_rollout_summary(resource.attributes.get("rollout")),
                )
            )
    return report


def _rollout_summary(rollout: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    if not rollout:
        return None
    return {key: rollout.get(key) for key in ("stable", "new", "status", "weight", "reason")}
