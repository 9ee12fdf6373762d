"""servectl's own per-replica series, exported with Ray's metrics as ``ray_servectl_*``.

Requests, errors and latency by endpoint and role (primary or shadow), shadow
copies sent, and the replica-side queue Ray Serve 2.x no longer reports.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

QUEUING_BOUNDARIES_MS = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000]


@dataclass
class Tally:
    """One request being counted by ``ReplicaMetrics.counting``: ``at`` (monotonic seconds) is its arrival;
    ``status`` is the HTTP status it answered, when it has one (5xx counts as an error)."""

    at: float
    status: int = 0


class ReplicaMetrics:
    """servectl's own request counters for one backend's replica, exported with Ray's metrics (``ray_servectl_*``)."""

    def __init__(self, backend: str) -> None:
        from ray.util import metrics

        self.backend = backend
        self.requests = metrics.Counter(
            "servectl_requests",
            description="Requests a backend served, by endpoint and role (primary or shadow).",
            tag_keys=("endpoint", "backend", "role"),
        )
        self.shadow_sent = metrics.Counter(
            "servectl_shadow_sent",
            description="Shadow copies a primary sent, by endpoint and shadow backend.",
            tag_keys=("endpoint", "backend"),
        )
        self.errors = metrics.Counter(
            "servectl_errors",
            description="Requests whose backend code raised, by endpoint and role (primary or shadow).",
            tag_keys=("endpoint", "backend", "role"),
        )
        # Ray Serve 2.x has no replica-side queueing series (the seed's
        # serve_backend_queuing_latency_ms and serve_replica_queued_queries):
        # time and count from arrival at the replica until the user's code starts,
        # batch forming and the sync thread pool's queue included.
        self.queuing_latency = metrics.Histogram(
            "servectl_queuing_latency_ms",
            description="Time a request waited in the replica (batch queue, thread pool) before the backend's code ran.",
            boundaries=QUEUING_BOUNDARIES_MS,
            tag_keys=("backend",),
        )
        self.queued = metrics.Gauge(
            "servectl_replica_queued_queries",
            description="Requests in a replica waiting for the backend's code to start (per replica process).",
            tag_keys=("backend",),
        )
        self.latency = metrics.Histogram(
            "servectl_request_latency_ms",
            description="Time from a request's arrival at the replica to its answer, by endpoint and role.",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("endpoint", "backend", "role"),
        )
        self.tags = {"backend": backend}

    def served(self, endpoint: str, role: str) -> None:
        """Count a request ``endpoint`` sent this backend as ``role`` (primary or shadow)."""
        self.requests.inc(1, tags={"endpoint": endpoint or "-", "backend": self.backend, "role": role})

    @contextmanager
    def counting(self, endpoint: str, role: str) -> Iterator[Tally]:
        """Count one request around its handling: served on entry; an error when the block raises an
        ``Exception`` (not a cancellation: the client left) or sets ``tally.status`` to 5xx; its time on exit.

        Every way into a replica (a plain backend, an ingress app over HTTP, a handle call to one) counts
        through here, so Serve's ``serve_num_http_error_requests``-like meaning is the same for all of them.
        """
        self.served(endpoint, role)
        tally = Tally(time.monotonic())
        try:
            yield tally
        except Exception:
            self.failed(endpoint, role)
            raise
        else:
            if tally.status >= 500:
                self.failed(endpoint, role)
        finally:
            self.answered(endpoint, role, (time.monotonic() - tally.at) * 1000)

    def shadowed(self, endpoint: str, target: str) -> None:
        """Count a shadow copy of an ``endpoint`` request sent to backend ``target``."""
        self.shadow_sent.inc(1, tags={"endpoint": endpoint or "-", "backend": target})

    def failed(self, endpoint: str, role: str) -> None:
        """Count a request whose backend code raised (or, for an ingress app, answered 5xx)."""
        self.errors.inc(1, tags={"endpoint": endpoint or "-", "backend": self.backend, "role": role})

    def answered(self, endpoint: str, role: str, milliseconds: float) -> None:
        """Record a request's time in the replica, arrival to answer, in milliseconds."""
        self.latency.observe(milliseconds, tags={"endpoint": endpoint or "-", "backend": self.backend, "role": role})

    def waiting(self, count: int) -> None:
        """Set the gauge of requests waiting in this replica for the backend's code to start."""
        self.queued.set(count, tags=self.tags)

    def waited(self, milliseconds: float) -> None:
        """Record how long a request waited, in milliseconds, before the backend's code started on it."""
        self.queuing_latency.observe(milliseconds, tags=self.tags)
