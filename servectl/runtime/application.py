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
import inspect
import json
import sys
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Optional

from ray import serve

from servectl.runtime.batching import Batcher
from servectl.runtime.environment import import_target, open_environment, restore_environment
from servectl.runtime.metrics import ReplicaMetrics
from servectl.runtime.multiplexing import ModelLimit
from servectl.runtime.headers import ENDPOINT_HEADER, MIRRORED_HEADER, ROLE_HEADER, SHADOW_HEADER
from servectl.runtime.ingress import ingress_replica_class, is_asgi_app, is_ingress_class
from servectl.runtime.proof import is_http, take_proof, worker_route_proof
from servectl.runtime.request import HandleRequest
from servectl.runtime.sealed import unseal

SHADOW_RESPONSES_KEPT = 1024
SYNC_SWITCH_INTERVAL_S = 0.0005  # the GIL switch interval of a replica running sync code (Python's: 0.005)
QUEUE_REPORT_S = 1.0



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


@dataclass
class _Arrival:
    """A request's arrival at the replica, until the backend's code starts on it."""

    at: float
    started: bool = False


async def chunks_of(result: Any) -> AsyncIterator[Any]:
    """A backend's generator (sync or async) as an async generator. A sync one is advanced in the thread pool, so
    a backend sleeping between chunks never holds the replica's event loop; closing this one (the client went
    away, the stream was cancelled) closes the backend's, so its ``finally`` runs on the replica."""
    if inspect.isasyncgen(result):
        try:
            async for item in result:
                yield item
        finally:
            await result.aclose()
        return
    loop = asyncio.get_running_loop()
    done = object()
    step: Optional[asyncio.Future] = None
    try:
        while True:
            step = loop.run_in_executor(None, next, result, done)
            # Shielded: a cancel must not mark the step done while the thread still runs the generator (it could
            # not be closed then); the step finishes on its own and closes it below.
            item = await asyncio.shield(step)
            step = None
            if item is done:
                return
            yield item
    finally:
        if step is not None and not step.done():
            # Cancelled while the backend's code runs in a thread: close it once that step is over (a generator
            # cannot be closed while it executes).
            step.add_done_callback(lambda _: result.close())
        else:
            result.close()


def encoded(item: Any) -> bytes:
    """One streamed chunk as HTTP sends it: bytes as they are, text UTF-8, anything else as a JSON line."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, str):
        return item.encode()
    return (json.dumps(item) + "\n").encode()


def streamed(result: Any, over_http: bool) -> Any:
    """A backend's generator answer: over HTTP a Starlette ``StreamingResponse`` of its chunks (sent as they come,
    never buffered); to a handle the chunks themselves, for ``handle.options(stream=True)`` (Serve's streaming)."""
    chunks = chunks_of(result)
    if not over_http:
        return chunks
    from starlette.responses import StreamingResponse

    async def body() -> AsyncIterator[bytes]:
        try:
            async for item in chunks:
                yield encoded(item)
        finally:
            await chunks.aclose()

    return StreamingResponse(body(), media_type="text/plain; charset=utf-8")


def replica_class(args: dict[str, Any]) -> type:
    """A class Serve can run whose instances hold the user's backend (an ingress backend's: see
    ``servectl.runtime.ingress``). Raises TypeError when the code is neither callable nor an ASGI ingress.

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
    if is_ingress_class(target) or is_asgi_app(target):
        return ingress_replica_class(args)
    if is_class and "__call__" not in dir(target):
        raise TypeError(f"{import_path} has neither __call__(self, request) nor @serve.ingress(app)")
    if not is_class and not callable(target):
        raise TypeError(f"{import_path} is neither a class, a function nor an ASGI app")
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
            if not self.is_async:
                # Sync code runs in a thread beside the event loop. Between two C calls that release the GIL (a
                # layer's matrix product) it waits for the loop to hand the GIL back, up to Python's switch
                # interval (5 ms) each time: a batch of 32 through an 8-layer model ran at 0.73 of the model's
                # own speed, 1.02 with 0.5 ms (bench/batching.py).
                sys.setswitchinterval(SYNC_SWITCH_INTERVAL_S)
            self.metrics = ReplicaMetrics(backend)
            self.shadow_handles: dict[str, Any] = {}
            self.shadow_responses: collections.deque = collections.deque(maxlen=SHADOW_RESPONSES_KEPT)
            self.batcher = Batcher(self._run_batch, describe=f"backend {backend}") if batched else None
            self.waiting = 0
            self._queue_reporter: Optional[asyncio.Task] = None
            self.models = ModelLimit(self.instance)

        def reconfigure(self, config: Any) -> None:
            """Serve's user_config carries servectl's live settings and the user's own config."""
            settings = (config or {}).get("servectl") or {}
            self.models.want(settings.get("max_models_per_replica"))
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
            self.models.apply()
            endpoint = (_header_values(request, ENDPOINT_HEADER) or [""])[0]
            role = (_header_values(request, ROLE_HEADER) or ["primary"])[0]
            with self.metrics.counting(endpoint, role) as tally:
                arrived = _Arrival(tally.at)
                shadows = _header_values(request, SHADOW_HEADER) if role != "shadow" else []
                if shadows:
                    await self._mirror(request, endpoint, shadows)
                for name in _header_values(request, MIRRORED_HEADER) if role != "shadow" else []:
                    self.metrics.shadowed(endpoint, name)  # a copy the front proxy sent itself
                self.waiting += 1  # exported by _report_queue, not per request
                try:
                    if self.batcher is not None:
                        return await self.batcher.submit((request, arrived))
                    result = await self._run(request, [arrived])
                    if inspect.isgenerator(result) or inspect.isasyncgen(result):
                        return streamed(result, over_http=is_http(request))
                    return result
                finally:
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
