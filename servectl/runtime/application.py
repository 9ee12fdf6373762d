"""The Serve application builder that runs on the workers, one application per backend.

Serve imports ``servectl.runtime.application:build`` with the backend's
``args`` inside the backend's runtime environment (the uploaded config dir), so
the user's code is imported where it runs, never pickled from the CLI. The
code hash travels in ``args``: Serve derives the code version from them, so
replicas restart exactly when the code, init arguments or resources change,
while replica count, concurrency and user_config update in place.

Sensitive values arrive sealed (``servectl.runtime.sealed``): the replica
opens its constructor arguments, ``user_config`` and environment variables
itself, so they never appear in clear in Serve's config or Ray's logs.

The replica also carries out shadow traffic: a request marked
``x-servectl-shadow: B`` (by the front proxy or a handle, at the endpoint's
shadow proportion) is copied to backend B in the background. The caller gets
this backend's answer; the copy is handed to Serve's router and never awaited,
and B's queue is bounded (its max_queued_requests), so a slow or failing
shadow cannot hold the primary.
"""
from __future__ import annotations

import asyncio
import collections
import importlib
import inspect
import os
import time
from dataclasses import dataclass
from typing import Any, Optional

from ray import serve

from servectl.runtime.batching import Batcher
from servectl.runtime.headers import ENDPOINT_HEADER, ROLE_HEADER, SHADOW_HEADER
from servectl.runtime.proof import is_http, take_proof, worker_route_proof
from servectl.runtime.request import HandleRequest
from servectl.runtime.sealed import unseal

SHADOW_RESPONSES_KEPT = 1024
QUEUING_BOUNDARIES_MS = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
QUEUE_REPORT_S = 1.0
LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000]



def import_target(import_path: str) -> Any:
    """The object an import path names: ``"module:attr.attr"``, Serve's ``import_path`` form.

    Imports the module, then follows the dotted attributes. Raises ImportError when the module
    does not import and AttributeError when an attribute is missing (a path without ``:`` included).
    """
    module_name, _, attr = import_path.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    return target


def _header_values(request: Any, name: str) -> list[str]:
    headers = getattr(request, "headers", None) or {}
    if hasattr(headers, "getlist"):
        raw = headers.getlist(name)
    else:
        raw = [headers[name]] if name in headers else []
    return [v.strip() for value in raw for v in str(value).split(",") if v.strip()]


async def _copy_of(request: Any, endpoint: str) -> HandleRequest:
    headers = {k: v for k, v in dict(getattr(request, "headers", {}) or {}).items() if k.lower() != SHADOW_HEADER}
    headers[ROLE_HEADER] = "shadow"
    headers[ENDPOINT_HEADER] = endpoint
    query = dict(getattr(request, "query_params", {}) or {})
    body = await request.body() if hasattr(request, "body") else b""
    path = getattr(getattr(request, "url", None), "path", None) or getattr(request, "path", "/")
    return HandleRequest(query_params=query, headers=headers, raw_body=body, method=getattr(request, "method", "GET"), path=path)


class _Metrics:
    """servectl's own request counters, exported with Ray's metrics (``ray_servectl_*``)."""

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
        self.requests.inc(1, tags={"endpoint": endpoint or "-", "backend": self.backend, "role": role})

    def shadowed(self, endpoint: str, target: str) -> None:
        self.shadow_sent.inc(1, tags={"endpoint": endpoint or "-", "backend": target})

    def failed(self, endpoint: str, role: str) -> None:
        self.errors.inc(1, tags={"endpoint": endpoint or "-", "backend": self.backend, "role": role})

    def answered(self, endpoint: str, role: str, milliseconds: float) -> None:
        self.latency.observe(milliseconds, tags={"endpoint": endpoint or "-", "backend": self.backend, "role": role})

    def waiting(self, count: int) -> None:
        self.queued.set(count, tags=self.tags)

    def waited(self, milliseconds: float) -> None:
        self.queuing_latency.observe(milliseconds, tags=self.tags)


@dataclass
class _Arrival:
    """A request's arrival at the replica, until the backend's code starts on it."""

    at: float
    started: bool = False


def open_environment(args: dict[str, Any]) -> dict[str, Optional[str]]:
    """Put the backend's sensitive environment variables (sealed in ``args``) into this process's environment.

    Called before the backend's code is imported, wherever that happens (the
    application's build task, each replica), so module-level reads see them.
    Returns what the variables were before, for ``restore_environment``.
    """
    opened = unseal(args.get("sensitive_env") or {})
    before = {name: os.environ.get(name) for name in opened}
    os.environ.update({name: str(value) for name, value in opened.items()})
    return before


def restore_environment(before: dict[str, Optional[str]]) -> None:
    """Undo ``open_environment`` (the build task's worker may serve another application next)."""
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def replica_class(args: dict[str, Any]) -> type:
    """A class Serve can run whose instances hold the user's backend.

    The class keeps the backend's import path, not the backend's class: Serve
    pickles it to the replicas, and unpickling a class reference would import
    the user's module before the replica has set its environment.
    """
    import_path = args["import_path"]
    before = open_environment(args)
    try:
        target = import_target(import_path)
    finally:
        restore_environment(before)
    init_args = list(args.get("init_args") or [])
    init_kwargs = dict(args.get("init_kwargs") or {})
    is_class = inspect.isclass(target)
    if is_class and not callable(getattr(target, "__call__", None)):
        raise TypeError(f"{import_path} has no __call__(self, request) method")
    del target
    backend = args["backend"]
    batched = bool(args.get("batched"))

    class BackendReplica:
        def __init__(self) -> None:
            open_environment(args)
            target = import_target(import_path)
            self.instance = target(*unseal(init_args), **unseal(init_kwargs)) if is_class else None
            self.handler = self.instance if is_class else target
            call = self.instance.__call__ if is_class else target
            self.is_async = inspect.iscoroutinefunction(call)
            self.metrics = _Metrics(backend)
            self.shadow_handles: dict[str, Any] = {}
            self.shadow_responses: collections.deque = collections.deque(maxlen=SHADOW_RESPONSES_KEPT)
            self.batcher = Batcher(self._run_batch, describe=f"backend {backend}") if batched else None
            self.waiting = 0
            self._queue_reporter: Optional[asyncio.Task] = None

        def reconfigure(self, config: Any) -> None:
            """Serve's user_config carries servectl's live settings and the user's own config."""
            settings = (config or {}).get("servectl") or {}
            if self.batcher is not None and settings.get("max_batch_size"):
                self.batcher.resize(int(settings["max_batch_size"]), float(settings.get("batch_wait_timeout_s") or 0.0))
            user_config = unseal((config or {}).get("user"))
            method = getattr(self.instance, "reconfigure", None)
            if method is not None and user_config is not None:  # as Serve: only when user_config is set
                method(user_config)

        def _started(self, arrivals: list[_Arrival], at: float) -> None:
            for arrival in arrivals:
                if not arrival.started:
                    arrival.started = True
                    self.waiting -= 1
                    self.metrics.waited((at - arrival.at) * 1000)

        async def _run(self, payload: Any, arrivals: list[_Arrival]) -> Any:
            if self.is_async:
                self._started(arrivals, time.monotonic())
                return await self.handler(payload)
            # Serve runs sync methods in a thread pool too; do the same for sync user code.
            loop = asyncio.get_running_loop()

            def in_thread() -> Any:
                loop.call_soon_threadsafe(self._started, arrivals, time.monotonic())
                return self.handler(payload)

            return await loop.run_in_executor(None, in_thread)

        async def _run_batch(self, items: list[tuple[Any, _Arrival]]) -> Any:
            return await self._run([request for request, _ in items], [arrived for _, arrived in items])

        async def _report_queue(self) -> None:
            # The one place the queue gauge is set: Ray's exporter showed a gauge only
            # while it was being set, so it is re-set every second, and requests
            # themselves only count.
            while True:
                self.metrics.waiting(self.waiting)
                await asyncio.sleep(QUEUE_REPORT_S)

        async def __call__(self, request: Any) -> Any:
            if is_http(request):
                proof = worker_route_proof()
                if not take_proof(request, proof or "") and proof is not None:
                    # Not routed by an endpoint's policy (an encoded path, Serve's own port): no such route.
                    from starlette.responses import PlainTextResponse

                    return PlainTextResponse("Not Found", status_code=404)
            if self._queue_reporter is None:
                self._queue_reporter = asyncio.get_running_loop().create_task(self._report_queue())
            endpoint = (_header_values(request, ENDPOINT_HEADER) or [""])[0]
            role = (_header_values(request, ROLE_HEADER) or ["primary"])[0]
            self.metrics.served(endpoint, role)
            arrived = _Arrival(time.monotonic())
            shadows = _header_values(request, SHADOW_HEADER) if role != "shadow" else []
            if shadows:
                await self._mirror(request, endpoint, shadows)
            self.waiting += 1  # exported by _report_queue, not per request
            try:
                if self.batcher is not None:
                    return await self.batcher.submit((request, arrived))
                return await self._run(request, [arrived])
            except Exception:
                self.metrics.failed(endpoint, role)
                raise
            finally:
                self.metrics.answered(endpoint, role, (time.monotonic() - arrived.at) * 1000)
                if not arrived.started:  # given up before its turn (client gone): it leaves the queue unmeasured
                    arrived.started = True
                    self.waiting -= 1

        async def _mirror(self, request: Any, endpoint: str, shadows: list[str]) -> None:
            # Fire and forget: the copy is handed to Serve's router and never
            # awaited here, so the primary neither waits for nor fetches the
            # shadow's answer. The shadow's bounded queue (max_queued_requests)
            # refuses copies it cannot take; the shadow counts its own errors.
            copy = await _copy_of(request, endpoint)
            for name in shadows:
                if name not in self.shadow_handles:
                    self.shadow_handles[name] = serve.get_deployment_handle(name, app_name=name)
                # Kept referenced (never awaited): a response collected before
                # Serve has sent its request can lose the copy.
                self.shadow_responses.append(self.shadow_handles[name].remote(copy))
                self.metrics.shadowed(endpoint, name)

    BackendReplica.__name__ = BackendReplica.__qualname__ = f"Backend_{backend}"
    return BackendReplica


def build(args: dict[str, Any]) -> Any:
    """Serve application builder: ``import_path: servectl.runtime.application:build``."""
    return serve.deployment(name=args["backend"])(replica_class(args)).bind()
