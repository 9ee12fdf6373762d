"""WebSockets (issue #17, item 3, first part) through the front proxy to a FastAPI websocket route: the endpoint's
policy picks the backend when the connection opens (a shard key honoured), and only through the front proxy."""
from __future__ import annotations

import json

import pytest
from websockets.sync.client import connect

from tests.conftest import copy_example, run_cli

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
