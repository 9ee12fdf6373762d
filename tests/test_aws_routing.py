"""The routing document and the node agents' reports in S3 (moto): versions, waits, and what a lagging node costs."""
from __future__ import annotations

import threading
import time

import pytest

from servectl.errors import ProviderError
from servectl.providers.aws.routing import RoutingStore


def routing_store(moto_server, name: str) -> RoutingStore:
    s3 = moto_server.client("s3")
    s3.create_bucket(Bucket=name)
    return RoutingStore(s3, name, "c1")


def test_versions_count_up_and_unchanged_documents_cost_nothing(moto_server):
    store = routing_store(moto_server, "routing-versions")
    assert store.read() == (None, None)
    assert store.publish({"api": {"route": "/api"}}, ["a"], 8001) == 1
    document, etag = store.read()
    assert document["version"] == 1 and document["backends"] == ["a"]
    assert store.read(etag) == (None, etag)  # a conditional GET: the agents' idle poll
    assert store.publish({}, ["a", "b"], 8001) == 2
    assert store.read(etag)[0]["version"] == 2


def test_wait_for_returns_once_every_node_serves_and_names_the_laggards(moto_server):
    store = routing_store(moto_server, "routing-waits")
    version = store.publish({}, ["a"], 8001)
    assert store.report_of("10.0.0.1") is None
    store.report(ip := "10.0.0.1", version, True)
    assert store.report_of(ip)["version"] == version

    late = threading.Timer(1.0, store.report, args=("10.0.0.2", version, True))
    late.start()
    started = time.monotonic()
    store.wait_for(version, ["10.0.0.1", "10.0.0.2"], timeout_s=20)
    assert 0.9 < time.monotonic() - started < 10

    with pytest.raises(ProviderError, match=r"routing version 2 not served after 1s by node\(s\) 10.0.0.3"):
        store.wait_for(store.publish({}, ["a"], 8001), ["10.0.0.3"], timeout_s=1)
    store.clear()
    assert store.report_of(ip) is None and store.current() is None


def _agent(store: RoutingStore, tmp_path, port: int):
    from servectl.node_agent.agent import NodeAgent
    from servectl.providers.front_proxy import FrontProxy

    return NodeAgent(store=store, proxy=FrontProxy(str(tmp_path / "agent")), node_ip="10.0.0.9",
                     listen_host="127.0.0.1", listen_port=port)


def test_the_agent_refuses_a_document_that_would_inject_configuration(moto_server, tmp_path):
    """A backend name with a newline would add a `program` section HAProxy's master runs: refused whole, reported."""
    from servectl.providers.embedded_cluster import free_ports

    store = routing_store(moto_server, "routing-inject")
    (port,) = free_ports(1)
    agent = _agent(store, tmp_path, port)
    evil = "a\nprogram pwn\n    command /bin/sh -c 'touch /tmp/pwned'"
    for endpoints, backends in (
        ({"api": {"route": "/api", "segments": {evil: [[0, 1000000]]}, "shadow": {}}}, ["a"]),
        ({"api": {"route": "/api\n    stats enable", "segments": {"a": [[0, 1000000]]}, "shadow": {}}}, ["a"]),
        ({"api\nx": {"route": "/api", "segments": {"a": [[0, 1000000]]}, "shadow": {}}}, ["a"]),
        ({"api": {"route": "/api", "segments": {"a": [[0, "1000000 if TRUE"]]}, "shadow": {}}}, ["a"]),
        ({"api": {"route": "/api", "segments": {"a": [[0, 1000000]]}, "shadow": {"b": "1 }"}}}, ["a"]),
        ({"api": {"route": "/api", "segments": {"a": [[0, 1000000]]}, "shadow": {},
                  "models": {"m\n    stats enable": {"a": [[0, 1000000]]}}}}, ["a"]),
        ({"api": {"route": "/api", "segments": {"a": [[0, 1000000]]}, "shadow": {}, "models": {"m": {evil: [[0, 1]]}}}},
         ["a"]),
        ({"api": {"route": "/api", "segments": {"a": [[0, 1000000]]}, "shadow": {},
                  "deregistration_delay_s": "300s\n    stats enable"}}, ["a"]),
        ({"api": {"route": "/api", "segments": {"a": [[0, 1000000]]}, "shadow": {}, "deregistration_delay_s": 1e9}},
         ["a"]),
        ({}, [evil]),
    ):
        version = store.publish(endpoints, backends, 8001)
        agent.step()
        report = store.report_of("10.0.0.9")
        assert report["version"] == version and report["serving"] is False, report
        assert report["detail"].startswith("refused the routing document"), report
        assert not (tmp_path / "agent" / "haproxy.cfg").exists()  # nothing was written, nothing started
        with pytest.raises(ProviderError, match="refused the routing document"):
            store.wait_for(version, ["10.0.0.9"], timeout_s=30)  # apply hears of it at once


def test_a_failed_reload_is_retried_until_the_version_is_served(moto_server, tmp_path):
    import socket

    from servectl.providers.embedded_cluster import free_ports, port_open

    store = routing_store(moto_server, "routing-retry")
    (port,) = free_ports(1)
    agent = _agent(store, tmp_path, port)
    version = store.publish({"api": {"route": "/api", "segments": {"a": [[0, 1000000]]}, "shadow": {}}}, ["a"], 8001)
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", port))
    squatter.listen()
    try:
        with pytest.raises(ProviderError, match="already in use"):
            agent.step()  # the proxy cannot start: this version is not served yet
    finally:
        squatter.close()
    try:
        agent.step()  # the same document, unchanged in S3: applied on the next poll
        assert agent.applied is not None and agent.applied["version"] == version
        assert port_open("127.0.0.1", port)
    finally:
        agent.proxy.stop()


def test_agents_report_open_websockets_and_a_removal_waits_for_them_to_close(moto_server, tmp_path):
    """Issue #17 on AWS: a node agent reports the WebSockets its front proxy holds, by backend; a weight change keeps
    an open one on its backend (the previous HAProxy worker holds it), and the wait apply makes before removing that
    backend lasts until the connection closes — not its bound."""
    from websockets.sync.client import connect
    from websockets.sync.server import serve

    from servectl.providers.embedded_cluster import free_ports

    store = routing_store(moto_server, "routing-websockets")
    port, serve_port = free_ports(2)

    def echo(connection) -> None:
        for message in connection:
            connection.send(message)

    # What stands for Serve's proxy behind the node's front proxy: a WebSocket echo (the agent reports "not serving").
    server = serve(echo, "127.0.0.1", serve_port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    agent = _agent(store, tmp_path, port)

    def policy(backend: str) -> dict:
        return {"api": {"route": "/api", "segments": {backend: [[0, 1000000]]}, "shadow": {}, "deregistration_delay_s": 60}}

    lines: list[str] = []
    try:
        store.publish(policy("a"), ["a", "b"], serve_port)
        agent.step()
        with connect(f"ws://127.0.0.1:{port}/api/ws", open_timeout=10) as socket:
            socket.send("hi")
            assert socket.recv(timeout=10) == "hi"
            agent.step()
            assert store.report_of("10.0.0.9")["websockets"] == {"a": 1}
            store.publish(policy("b"), ["a", "b"], serve_port)  # traffic moves off a: the connection stays
            agent.step()
            assert store.report_of("10.0.0.9")["version"] == 2
            assert store.open_websockets("a", ["10.0.0.9"]) == 1 and store.open_websockets("b", ["10.0.0.9"]) == 0
            socket.send("still here")
            assert socket.recv(timeout=10) == "still here"

            waiter = threading.Thread(target=store.wait_for_websockets, args=("a", ["10.0.0.9"], 60, lines.append),
                                      kwargs={"poll_s": 0.2})
            started = time.monotonic()
            waiter.start()
            time.sleep(1.0)
            assert waiter.is_alive()  # waiting on the open connection
        deadline = time.monotonic() + 20
        while waiter.is_alive() and time.monotonic() < deadline:
            agent.step()  # the agent's next poll reports it closed
            time.sleep(0.2)
        waiter.join(timeout=1)
        assert not waiter.is_alive() and time.monotonic() - started < 20
        assert lines == ["waiting for 1 open WebSocket connection(s) on a to close (at most 60 s)"]
        assert store.report_of("10.0.0.9")["websockets"] == {}
    finally:
        agent.proxy.stop()
        server.shutdown()
