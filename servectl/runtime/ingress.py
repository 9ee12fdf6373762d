"""ASGI ingress backends: a FastAPI (or any ASGI) app as a backend, as Ray Serve's ``@serve.ingress(app)``.

A backend whose code is a class under ``@serve.ingress(app)``, or an ASGI app
itself (a FastAPI or Starlette instance, or an ``async def app(scope,
receive, send)``), runs as an ``ASGIAppReplicaWrapper`` — the class Serve
recognises as an ingress, so its proxy speaks ASGI to it and the app sees
every path under the backend's route, with its query strings, bodies,
status codes, headers and streaming responses unchanged.

servectl wraps the app in ``RoutedApp``, an ASGI middleware that does for
ingress backends what the plain replica does for others: the route proof
(404 without it), servectl's request series, shadow copies, and the public
prefix. The front proxy rewrites ``/api/items/7`` onto the backend's internal
route; the middleware puts the endpoint's route back as the app's
``root_path``, so FastAPI's ``/api/docs`` and ``/api/openapi.json`` and its
redirects name the URLs clients use. A handle call (``HandleRequest``) runs
through the same app in the replica and answers a ``HandleResponse``.
"""
from __future__ import annotations

import asyncio
import collections
import inspect
import json as jsonlib
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

from ray import serve

from servectl.runtime.environment import import_target, open_environment
from servectl.runtime.headers import (
    ENDPOINT_HEADER, MIRRORED_HEADER, PROOF_HEADER, ROLE_HEADER, ROUTE_HEADER, SHADOW_HEADER,
)
from servectl.runtime.metrics import ReplicaMetrics
from servectl.runtime.multiplexing import ModelLimit
from servectl.runtime.proof import worker_route_proof
from servectl.runtime.request import HandleRequest
from servectl.runtime.sealed import unseal

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SHADOW_RESPONSES_KEPT = 1024
MAX_HANDLE_BODY_BYTES = 1 << 30  # a handle call's body is held in memory whole: 1 GiB at most


def is_ingress_class(target: Any) -> bool:
    """Whether ``target`` is a class under ``@serve.ingress(app)`` (Serve's ``ASGIAppReplicaWrapper``)."""
    from ray.serve._private.http_util import ASGIAppReplicaWrapper

    return inspect.isclass(target) and issubclass(target, ASGIAppReplicaWrapper)


def is_asgi_app(target: Any) -> bool:
    """Whether ``target`` is an ASGI app object: a Starlette/FastAPI instance, or a coroutine function (or object
    with such a ``__call__``) taking ``(scope, receive, send)``."""
    try:
        from starlette.applications import Starlette

        if isinstance(target, Starlette):
            return True
    except ImportError:  # pragma: no cover - Serve depends on Starlette
        pass
    if inspect.isclass(target):
        return False
    call = target if inspect.isfunction(target) else getattr(target, "__call__", None)
    if not inspect.iscoroutinefunction(call):
        return False
    parameters = [p for p in inspect.signature(call).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return [p.name for p in parameters] == ["scope", "receive", "send"]


def _header(scope: Scope, name: str) -> Optional[str]:
    wanted = name.encode()
    for key, value in scope.get("headers") or []:
        if key.lower() == wanted:
            return value.decode("latin-1")
    return None


def _names(scope: Scope, header: str) -> list[str]:
    """The comma-separated backend names in ``header`` (servectl's shadow marks); empty when it is absent."""
    return [name.strip() for name in (_header(scope, header) or "").split(",") if name.strip()]


def _without(scope: Scope, *names: str) -> list[tuple[bytes, bytes]]:
    dropped = {name.encode() for name in names}
    return [(key, value) for key, value in scope.get("headers") or [] if key.lower() not in dropped]


def public_scope(scope: Scope, route: Optional[str]) -> Scope:
    """``scope`` as the client addressed it: the endpoint's ``route`` as ``root_path`` and at the head of ``path``
    in place of the backend's internal route (Serve's ``root_path``). Unchanged without a route (a handle call)."""
    if not route:
        return scope
    internal = scope.get("root_path") or ""
    path = scope.get("path") or "/"
    rest = path[len(internal):] if internal and path.startswith(internal) else path
    prefix = "" if route == "/" else route
    public = dict(scope)
    public["root_path"] = prefix
    public["path"] = prefix + (rest if rest.startswith("/") else "/" + rest)
    public["raw_path"] = public["path"].encode()
    return public


@dataclass
class HandleResponse:
    """What a handle call to an ingress backend answers: the app's HTTP response, read whole.

    ``status`` (an int), ``headers`` (lower-cased name → value; the last of repeated ones), ``body`` (bytes);
    ``text`` and ``json()`` decode it. Pickles across Ray.
    """

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (undecodable bytes replaced)."""
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON; raises ValueError when it is not JSON."""
        return jsonlib.loads(self.body)


def _handle_scope(request: HandleRequest) -> Scope:
    """The ASGI scope of a handle call (or a shadow copy) to an ingress app: its path and method, keyword arguments
    as the query string."""
    from urllib.parse import urlencode

    path = request.path if request.path.startswith("/") else "/" + request.path
    method = "POST" if request.method == "CALL" and request.raw_body else ("GET" if request.method == "CALL" else request.method)
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": method.upper(), "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": urlencode(request.query_params, doseq=True).encode(),
        "headers": [(key.lower().encode(), str(value).encode()) for key, value in request.headers.items()],
        "client": None, "server": None,
    }


def _body_once(request: HandleRequest) -> Receive:
    """The app's ``receive``: the body once, then nothing until the call ends — a handle's caller is "connected"
    until then (answering ``http.disconnect`` at once would make a StreamingResponse stop after its first chunk)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # ends only by cancellation, when the call does
        sent = True
        return {"type": "http.request", "body": request.raw_body, "more_body": False}

    return receive


async def call_app(app: ASGIApp, request: HandleRequest) -> HandleResponse:
    """Run ``request`` through the ASGI ``app`` in this process and collect its answer (a handle call, or a shadow
    copy, to an ingress backend). The path is the request's; keyword arguments become the query string."""
    status = 500
    headers: dict[str, str] = {}
    chunks: list[bytes] = []

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
            for key, value in message.get("headers") or []:
                headers[key.decode("latin-1").lower()] = value.decode("latin-1")
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body") or b""))

    await app(_handle_scope(request), _body_once(request), send)
    return HandleResponse(status=status, headers=headers, body=b"".join(chunks))


class AppStatusError(RuntimeError):
    """A streamed handle call whose app answered an error status (≥ 400): ``status`` and the body's start."""

    def __init__(self, status: int, body: bytes = b"") -> None:
        super().__init__(f"the app answered {status}: {body[:200].decode('utf-8', 'replace')}")
        self.status = status
        self.body = bytes(body[:200])

    def __reduce__(self) -> tuple[Any, tuple[int, bytes]]:
        # Raised in the replica, re-raised in the caller: Ray pickles it, and an exception pickles its args.
        return AppStatusError, (self.status, self.body)


async def stream_app(app: ASGIApp, request: HandleRequest) -> AsyncIterator[bytes]:
    """Run ``request`` through the ASGI ``app`` and yield its body as the app sends it (a handle call made with
    ``options(stream=True)``): each non-empty ``http.response.body`` chunk as bytes, as over HTTP.

    Raises AppStatusError when the app answers 400 or above (before any chunk), and whatever the app raises. A
    caller that stops iterating (or is cancelled) cancels the app where it stands, as a client leaving does.
    """
    queue: asyncio.Queue = asyncio.Queue()
    done = object()
    status = 500
    error_body = bytearray()

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        elif message["type"] == "http.response.body":
            body = bytes(message.get("body") or b"")
            if status >= 400:
                error_body.extend(body)
            elif body:
                await queue.put(body)

    async def run() -> None:
        try:
            await app(_handle_scope(request), _body_once(request), send)
        finally:
            await queue.put(done)

    task = asyncio.get_running_loop().create_task(run())
    try:
        while (chunk := await queue.get()) is not done:
            yield chunk
        await task  # the app's own exception, if it raised
        if status >= 400:
            raise AppStatusError(status, bytes(error_body))
    finally:
        if not task.done():
            task.cancel()


class RoutedApp:
    """The ASGI middleware around an ingress backend's app (see the module's docstring).

    ``backend`` names the backend (for the series and shadow handles); ``proof()`` gives the route proof this
    cluster expects (None: token auth is off, nothing to check).
    """

    def __init__(self, app: ASGIApp, backend: str, metrics: ReplicaMetrics,
                 proof: Callable[[], Optional[str]] = worker_route_proof) -> None:
        self.app = app
        self.backend = backend
        self.metrics = metrics
        self.proof = proof
        self.shadow_handles: dict[str, Any] = {}
        self.shadow_responses: collections.deque = collections.deque(maxlen=SHADOW_RESPONSES_KEPT)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection: lifespan passes through; HTTP and WebSocket need the route proof."""
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        import hmac

        expected = self.proof()
        given = _header(scope, PROOF_HEADER)
        if expected is not None and (given is None or not hmac.compare_digest(given, expected)):
            await _not_found(scope, send)
            return
        route = _header(scope, ROUTE_HEADER)
        endpoint = _header(scope, ENDPOINT_HEADER) or ""
        role = _header(scope, ROLE_HEADER) or "primary"
        shadows, mirrored = _names(scope, SHADOW_HEADER), _names(scope, MIRRORED_HEADER)
        inner = public_scope(scope, route)
        inner["headers"] = _without(scope, PROOF_HEADER, ROUTE_HEADER, SHADOW_HEADER, MIRRORED_HEADER)
        if shadows and role != "shadow" and scope["type"] == "http":
            receive = await self._mirror(inner, receive, endpoint, shadows)
        for name in mirrored if role != "shadow" else []:
            self.metrics.shadowed(endpoint, name)  # a copy the front proxy sent itself
        await self._serve(inner, receive, send, endpoint, role)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, endpoint: str, role: str) -> None:
        with self.metrics.counting(endpoint, role) as tally:

            async def counted(message: Message) -> None:
                if message["type"] == "http.response.start":
                    tally.status = int(message["status"])
                await send(message)

            await self.app(scope, receive, counted)

    async def _mirror(self, scope: Scope, receive: Receive, endpoint: str, shadows: list[str]) -> Receive:
        """Read the request body whole, send a copy to each shadow backend through its handle (never awaited), and
        return a ``receive`` that replays the body to the app."""
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body") or b""
            if not message.get("more_body"):
                break
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope.get("headers") or []}
        headers[ROLE_HEADER] = "shadow"
        headers[ENDPOINT_HEADER] = endpoint
        from urllib.parse import parse_qsl

        copy = HandleRequest(
            query_params=dict(parse_qsl((scope.get("query_string") or b"").decode("latin-1"))), headers=headers,
            raw_body=bytes(body), method=scope.get("method", "GET"),
            path=(scope.get("path") or "/")[len(scope.get("root_path") or ""):] or "/",
        )
        for name in shadows:
            if name not in self.shadow_handles:
                self.shadow_handles[name] = serve.get_deployment_handle(name, app_name=name)
            self.shadow_responses.append(self.shadow_handles[name].remote(copy))
            self.metrics.shadowed(endpoint, name)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return replay


async def _not_found(scope: Scope, send: Send) -> None:
    """404 to what no endpoint's policy routed (a WebSocket is closed instead, as a 403 handshake)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"Not Found"})


def ingress_replica_class(args: dict[str, Any]) -> type:
    """The Serve class for an ingress backend: an ``ASGIAppReplicaWrapper`` holding the user's app inside
    ``RoutedApp``. Like the plain replica class, it keeps the import path, not the user's class, so the user's
    module is imported only once the replica has opened its environment."""
    from ray.serve._private.http_util import ASGIAppReplicaWrapper

    import_path = args["import_path"]
    init_args = list(args.get("init_args") or [])
    init_kwargs = dict(args.get("init_kwargs") or {})
    backend = args["backend"]

    class IngressReplica(ASGIAppReplicaWrapper):
        async def __init__(self) -> None:
            open_environment(args)
            target = import_target(import_path)
            self.user: Any = None
            if is_ingress_class(target):
                # Serve builds these with an async __init__: create, then await it, as Serve's replica does.
                self.user = target.__new__(target)
                await self.user.__init__(*unseal(init_args), **unseal(init_kwargs))
                app = self.user.app
            else:
                app = target
            self.routed = RoutedApp(app, backend, ReplicaMetrics(backend))
            self.models = ModelLimit(self.user)
            ASGIAppReplicaWrapper.__init__(self, self.routed)

        async def __call__(self, *call: Any) -> Any:
            self.models.apply()
            if len(call) == 3:  # Serve's HTTP path: (scope, receive, send)
                await self._asgi_app(*call)
                return None
            (request,) = call  # a handle call or a shadow copy: the same app, in this process
            if not isinstance(request, HandleRequest):
                request = HandleRequest.from_call((request,), {})
            if len(request.raw_body) > MAX_HANDLE_BODY_BYTES:
                raise ValueError(f"a handle call's body is limited to {MAX_HANDLE_BODY_BYTES} bytes")
            endpoint = request.headers.get(ENDPOINT_HEADER, "")
            role = request.headers.get(ROLE_HEADER, "primary")
            if request.stream:
                return self._streamed(request, endpoint, role)
            with self.routed.metrics.counting(endpoint, role) as tally:
                response = await call_app(self.routed.app, request)
                tally.status = response.status
            return response

        async def _streamed(self, request: HandleRequest, endpoint: str, role: str) -> AsyncIterator[bytes]:
            refused: Optional[AppStatusError] = None
            with self.routed.metrics.counting(endpoint, role) as tally:
                try:
                    async for chunk in stream_app(self.routed.app, request):
                        yield chunk
                except AppStatusError as err:  # counted by its status (a 4xx is the caller's), raised to the caller
                    tally.status, refused = err.status, err
            if refused is not None:
                raise refused

        def reconfigure(self, config: Any) -> None:
            """Serve's user_config: the user's part goes to the ingress class's own ``reconfigure``, if any."""
            self.models.want(((config or {}).get("servectl") or {}).get("max_models_per_replica"))
            user_config = unseal((config or {}).get("user"))
            method = getattr(self.user, "reconfigure", None) if self.user is not None else None
            if method is not None and user_config is not None:
                method(user_config)

        def __getattr__(self, name: str) -> Any:
            # handle.options(method_name=…) reaches the ingress class's own methods.
            if name.startswith("_") or name in ("user", "routed", "models"):
                raise AttributeError(name)
            user = self.__dict__.get("user")
            if user is None:
                raise AttributeError(name)
            return getattr(user, name)

    IngressReplica.__name__ = IngressReplica.__qualname__ = f"Ingress_{backend}"
    return IngressReplica
