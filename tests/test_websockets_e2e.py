"""WebSockets (issue #17, item 3) through the front proxy to a FastAPI websocket route: the endpoint's policy picks
the backend when the connection opens (a shard key honoured), only through the front proxy; an open connection
keeps its backend through weight changes, and removing that backend waits for it, at most the endpoint's
``deregistration_delay_s``."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from servectl.providers.embedded_cluster import RUNTIME_DIR
from servectl.providers.front_proxy import FrontProxy
from tests.conftest import SERVECTL, copy_example, run_cli

pytestmark = pytest.mark.ray


def test_a_websocket_connects_through_the_front_proxy_by_the_endpoints_policy(ray_cluster, tmp_path, applied_dirs):
    config = copy_example("fastapi_ingress", tmp_path)
    applied_dirs.append(config)
    assert run_cli(config, "apply", "--auto-approve", "--var", "v2_share=0.5").code == 0
    url = f"ws://127.0.0.1:{ray_cluster.http_port}/api/ws"

    # Messages both ways on one connection, answered by the backend the policy picked when it opened.
    with connect(url, open_timeout=30) as socket:
        answers = []
        for n in range(3):
            socket.send(f"m{n}")
            answers.append(socket.recv(timeout=30))
    version = answers[0].split(":")[0]
    assert version in ("v1", "v2") and answers == [f"{version}: m{n}" for n in range(3)], answers

    # A shard key picks one backend for every connection that carries it; without one, both get connections.
    for key in ("user-1", "user-2"):
        seen = set()
        for _ in range(4):
            with connect(url, additional_headers={"x-serve-shard-key": key}, open_timeout=30) as socket:
                socket.send("hi")
                seen.add(socket.recv(timeout=30).split(":")[0])
        assert len(seen) == 1, (key, seen)
    unkeyed = set()
    for _ in range(16):
        with connect(url, open_timeout=30) as socket:
            socket.send("hi")
            unkeyed.add(socket.recv(timeout=30).split(":")[0])
    assert unkeyed == {"v1", "v2"}, unkeyed

    # Not past the front proxy: Serve's own port has the internal route, but no route proof, so no conversation.
    serve_port = json.loads((config / "servectl.state.json").read_text())["provider"]["live"]["serve_port"]
    with pytest.raises(Exception):
        with connect(f"ws://127.0.0.1:{serve_port}/_servectl/api_v1/ws", open_timeout=30) as socket:
            socket.send("sneak")
            socket.recv(timeout=10)

    # A handshake for a path no endpoint routes is told so by the front proxy (Serve's proxy would answer 500).
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{ray_cluster.http_port}/nowhere/ws", open_timeout=30)
    assert refused.value.response.status_code == 404
    assert bytes(refused.value.response.body) == b"no endpoint route matches this path"


REMOVABLE = """
from servectl import Backend, Endpoint, LocalRay, var
LocalRay()
small = {"num_cpus": 0.25}
v2 = Backend("ws_v2", "models:ItemsApi", "v2", ray_actor_options=small)
share = var("v2_share", default=0.0)
traffic = {v2: 1.0}
if var("with_v1", default=True):
    traffic = {Backend("ws_v1", "models:ItemsApi", "v1", ray_actor_options=small): 1 - share, v2: share}
Endpoint("api", route="/api", traffic=traffic, deregistration_delay_s=var("drain_s", default=300.0))
"""


def exchange(socket, text: str) -> str:
    socket.send(text)
    return socket.recv(timeout=30)


def test_an_open_websocket_keeps_its_backend_through_weight_changes_and_its_removal_waits(
    ray_cluster, tmp_path, applied_dirs,
):
    config = copy_example("fastapi_ingress", tmp_path)
    (config / "main.py").write_text(REMOVABLE)
    applied_dirs.append(config)
    assert run_cli(config, "apply", "--auto-approve").code == 0
    url = f"ws://127.0.0.1:{ray_cluster.http_port}/api/ws"
    proxy = FrontProxy(str(config / RUNTIME_DIR))

    # A weight change: apply waits for HTTP requests only, says what it leaves open, and the connection stays on v1
    # while new ones go to v2; the previous HAProxy worker ends once the connection closes.
    with connect(url, open_timeout=30) as held:
        assert exchange(held, "a") == "v1: a"
        started = time.monotonic()
        moved = run_cli(config, "apply", "--auto-approve", "--var", "v2_share=1")
        assert moved.code == 0, moved.output
        assert time.monotonic() - started < 60  # not the 300 s bound
        assert "1 open WebSocket connection(s) keep their backend until they close (at most 300 s)" in moved.output
        assert len(proxy.workers()) == 2  # the previous worker holds the connection
        assert exchange(held, "b") == "v1: b"
        with connect(url, open_timeout=30) as fresh:
            assert exchange(fresh, "c") == "v2: c"
        assert exchange(held, "d") == "v1: d"
        # A lower delay does not shorten a drain under way (HAProxy: each worker keeps its config's bound), and
        # apply says the truth: the worker holding the connection stops ~300 s after its reload, not 5.
        lowered = run_cli(config, "apply", "--auto-approve", "--var", "v2_share=1", "--var", "drain_s=5")
        assert lowered.code == 0, lowered.output
        assert re.search(r"1 open WebSocket connection\(s\) keep their backend until they close \(at most 2\d\d s\)",
                         lowered.output), lowered.output
        assert exchange(held, "d2") == "v1: d2"
    deadline = time.monotonic() + 20
    while len(proxy.workers()) > 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(proxy.workers()) == 1

    # Removing the backend a connection is on waits for it to close (the client closes it 2 s into the wait)...
    assert run_cli(config, "apply", "--auto-approve", "--var", "v2_share=0").code == 0
    with connect(url, open_timeout=30) as held:
        assert exchange(held, "e") == "v1: e"
        removing = subprocess.Popen(
            [SERVECTL, "-C", str(config), "apply", "--auto-approve", "--var", "with_v1=false", "--var", "drain_s=20"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"},
        )
        lines: list[str] = []
        waiting_from = None
        assert removing.stdout is not None
        for line in removing.stdout:
            lines.append(line)
            if "open WebSocket connection(s) on ws_v1 to close" in line:
                waiting_from = time.monotonic()
                time.sleep(2)
                held.close()
                break
        lines += list(removing.stdout)
        removing.wait(timeout=120)
    output = "".join(lines)
    assert removing.returncode == 0 and waiting_from is not None, output
    waited = time.monotonic() - waiting_from
    assert "waiting for 1 open WebSocket connection(s) on ws_v1 to close (at most 20 s)" in output
    assert waited >= 2 and "still open" not in output, (waited, output)

    # ...and at most the declared delay: past it the connection is closed with its backend.
    assert run_cli(config, "apply", "--auto-approve", "--var", "drain_s=4").code == 0
    assert run_cli(config, "apply", "--auto-approve", "--var", "drain_s=4", "--var", "with_v1=true").code == 0
    with connect(url, open_timeout=30) as held:
        assert exchange(held, "f") == "v1: f"
        started = time.monotonic()
        cut = run_cli(config, "apply", "--auto-approve", "--var", "with_v1=false", "--var", "drain_s=4")
        assert cut.code == 0, cut.output
        assert 4 <= time.monotonic() - started < 60
        # At most the delay, or less: the worker holding it stops 4 s after its reload, whichever comes first.
        assert re.search(r"waiting for 1 open WebSocket connection\(s\) on ws_v1 to close \(at most [1-4] s\)",
                         cut.output), cut.output
        with pytest.raises(ConnectionClosed):
            exchange(held, "g")
