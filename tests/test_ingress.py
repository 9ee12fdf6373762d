"""The ingress middleware as functions (no Ray): the public prefix, the route proof, handle calls into an app."""
from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request

from servectl.runtime.ingress import RoutedApp, call_app, is_asgi_app, public_scope
from servectl.runtime.metrics import ReplicaMetrics
from servectl.runtime.request import HandleRequest

app = FastAPI()


@app.get("/items/{item_id}")
def item(item_id: int, request: Request) -> dict:
    return {"item_id": item_id, "root_path": request.scope["root_path"], "url": str(request.url_for("item", item_id=1)),
            "proof": request.headers.get("x-servectl-proof")}


@app.post("/echo")
async def echo(request: Request) -> dict:
    return {"body": (await request.body()).decode(), "q": dict(request.query_params)}


class FakeMetrics(ReplicaMetrics):
    """ReplicaMetrics' bookkeeping (``counting``) over recorded events instead of Ray's exporter."""

    def __init__(self) -> None:  # noqa: super().__init__ would create Ray metrics
        self.backend = "b"
        self.events: list[tuple] = []

    def served(self, *args): self.events.append(("served", *args))
    def failed(self, *args): self.events.append(("failed", *args))
    def answered(self, *args): self.events.append(("answered", *args[:2]))
    def shadowed(self, *args): self.events.append(("shadowed", *args))


def _request(app_, path: str, headers: dict[str, str], root_path: str = "/_servectl/b") -> tuple[int, bytes]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": root_path + path, "raw_path": (root_path + path).encode(), "root_path": root_path,
             "query_string": b"", "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 1)}
    answer: dict = {"body": b""}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    asyncio.run(app_(scope, receive, send))
    return answer["status"], answer["body"]


def test_public_scope_puts_the_endpoints_route_in_place_of_the_internal_one():
    scope = {"path": "/_servectl/b/items/7", "root_path": "/_servectl/b"}
    assert {k: public_scope(scope, "/api")[k] for k in ("path", "root_path")} == {"path": "/api/items/7", "root_path": "/api"}
    assert public_scope({"path": "/_servectl/b", "root_path": "/_servectl/b"}, "/api")["path"] == "/api/"
    assert {k: public_scope(scope, "/")[k] for k in ("path", "root_path")} == {"path": "/items/7", "root_path": ""}
    assert public_scope(scope, None) is scope


def test_routed_app_needs_the_proof_and_hides_servectls_headers():
    routed = RoutedApp(app, "b", FakeMetrics(), proof=lambda: "p" * 64)
    assert _request(routed, "/items/7", {"x-servectl-route": "/api"})[0] == 404
    assert _request(routed, "/items/7", {"x-servectl-proof": "q" * 64, "x-servectl-route": "/api"})[0] == 404
    status, body = _request(routed, "/items/7", {"x-servectl-proof": "p" * 64, "x-servectl-route": "/api",
                                                 "host": "example.com"})
    assert status == 200 and b'"root_path":"/api"' in body and b'"proof":null' in body
    assert b'"url":"http://example.com/api/items/1"' in body
    assert routed.metrics.events[:1] == [("served", "", "primary")]


def test_a_handle_call_runs_the_app_in_process():
    answer = asyncio.run(call_app(app, HandleRequest(query_params={"a": "1"}, raw_body=b"hi", method="POST", path="/echo")))
    assert (answer.status, answer.json()) == (200, {"body": "hi", "q": {"a": "1"}})
    assert asyncio.run(call_app(app, HandleRequest(path="/items/x"))).status == 422


def test_what_counts_as_an_asgi_app():
    async def raw(scope, receive, send):
        pass

    def plain(request):
        return "x"

    assert is_asgi_app(app) and is_asgi_app(raw)
    assert not is_asgi_app(plain) and not is_asgi_app(FakeMetrics)


def test_every_way_into_a_replica_counts_a_request_the_same_way():
    """served on arrival, an error for a raise or a 5xx answer (not for a client that left), a time on exit."""
    metrics = FakeMetrics()
    with metrics.counting("e", "primary") as tally:
        tally.status = 200
    with metrics.counting("e", "shadow") as tally:
        tally.status = 503
    try:
        with metrics.counting("e", "primary"):
            raise RuntimeError("the backend's code raised")
    except RuntimeError:
        pass
    try:
        with metrics.counting("e", "primary"):
            raise asyncio.CancelledError()
    except asyncio.CancelledError:
        pass
    assert metrics.events == [
        ("served", "e", "primary"), ("answered", "e", "primary"),
        ("served", "e", "shadow"), ("failed", "e", "shadow"), ("answered", "e", "shadow"),
        ("served", "e", "primary"), ("failed", "e", "primary"), ("answered", "e", "primary"),
        ("served", "e", "primary"), ("answered", "e", "primary"),
    ]
    failing = FastAPI()

    @failing.get("/")
    def broken() -> None:
        raise RuntimeError("boom")

    routed = RoutedApp(failing, "b", FakeMetrics(), proof=lambda: None)
    try:
        _request(routed, "/", {})
    except RuntimeError:
        pass
    assert [event[0] for event in routed.metrics.events] == ["served", "failed", "answered"]


def test_a_handle_reaches_a_route_by_path_and_method_and_refuses_malformed_ones():
    from servectl.runtime.handles import EndpointHandle

    handle = EndpointHandle("api", True, policy=object()).options(path="/items/7", method="post")
    assert (handle.path, handle.method) == ("/items/7", "POST")
    assert handle.options(shard_key="k").path == "/items/7"  # unset options keep the handle's
    for bad in ({"path": "items"}, {"path": "/a b"}, {"path": "/a?x=1"}, {"path": "/" + "a" * 2048}, {"method": "GE T"}):
        try:
            handle.options(**bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad}")
