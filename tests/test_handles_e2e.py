"""Composition and sync/async handles: calls follow the endpoint's traffic policy, like HTTP."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import requests

import servectl
from tests.conftest import copy_example, run_cli, write_config
from tests.test_cli_e2e import serve_details

pytestmark = pytest.mark.ray


def test_composed_model_calls_endpoints_through_handles(ray_cluster, tmp_path, applied_dirs):
    config = copy_example("composition", tmp_path)
    applied_dirs.append(config)
    result = run_cli(config, "apply", "--auto-approve")
    assert result.code == 0, result.output
    used = set()
    for _ in range(40):
        response = requests.post(ray_cluster.url("/composed"), data="hey!", timeout=30)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_used"] in (1, 2) and 0 <= body["score"] <= 1
        assert (body["model_used"] == 2) == (body["score"] > 0.5)
        used.add(body["model_used"])
    assert used == {1, 2}
    deployment = serve_details(ray_cluster)["applications"]["composed_backend"]["deployments"]["composed_backend"]
    assert deployment["deployment_config"]["max_ongoing_requests"] == 10  # max_concurrent_queries reached Serve
    # model_one and model_two have no route: they are reachable by handle only.
    assert requests.get(ray_cluster.url("/model_one"), timeout=10).status_code == 404


def test_sync_and_async_handles_from_a_driver_script(ray_cluster, tmp_path, applied_dirs):
    config = copy_example("handles", tmp_path)
    applied_dirs.append(config)
    assert run_cli(config, "apply", "--auto-approve").code == 0
    proc = subprocess.run(
        [sys.executable, str(config / "client.py"), str(config)], capture_output=True, text=True, timeout=120,
        env={**os.environ},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines[0] == {"sync": {"data": "from sync", "body": ""}}
    assert lines[1] == {"async": [{"data": f"async {i}", "body": "body"} for i in range(3)]}


def test_handle_shard_keys_land_where_http_shard_keys_do(ray_cluster, tmp_path, applied_dirs):
    config = copy_example("session_affinity", tmp_path)
    applied_dirs.append(config)
    assert run_cli(config, "apply", "--auto-approve").code == 0
    servectl.connect(str(config))
    handle = servectl.get_handle("affinity")
    seen = set()
    for i in range(40):
        key = f"user-{i}"
        over_http = requests.get(ray_cluster.url("/affinity"), headers={"X-SERVE-SHARD-KEY": key}, timeout=10).text
        over_handle = handle.options(shard_key=key).remote().result(timeout_s=60)
        assert over_handle == over_http, key
        seen.add(over_http)
    assert seen == {"served by backend_a", "served by backend_b"}


def test_handle_to_unknown_endpoint_is_a_clear_error(ray_cluster, tmp_path, applied_dirs):
    config = copy_example("handles", tmp_path)
    applied_dirs.append(config)
    assert run_cli(config, "apply", "--auto-approve").code == 0
    servectl.connect(str(config))
    with pytest.raises(servectl.ServectlError, match="no endpoint 'ecko' is applied on this cluster"):
        servectl.get_handle("ecko").remote()


SURFACE = """
from servectl import Backend, Endpoint, LocalRay
LocalRay()
small = {"num_cpus": 0.25}
Endpoint("kinds", route="/kinds", backend=Backend("kinds", "models:Kinds", ray_actor_options=small))
Endpoint("upper", backend=Backend("upper", "models:Upper", ray_actor_options=small))
Endpoint("caller", route="/caller", backend=Backend("caller", "models:SyncCaller", ray_actor_options=small))
"""
SURFACE_MODELS = """
import servectl
from starlette.responses import PlainTextResponse

class Kinds:
    async def __call__(self, request):
        kind = request.query_params.get("kind")
        if kind == "str":
            return "text"
        if kind == "bytes":
            return b"raw bytes"
        if kind == "dict":
            return {"a": 1, "echo": (await request.json())}
        if kind == "list":
            return [1, 2, 3]
        return PlainTextResponse("custom", status_code=201, headers={"x-kind": "response"})

class Upper:
    def __call__(self, request):
        return request.query_params["text"].upper()

class SyncCaller:
    # Plain (non-async) code inside a backend: a sync handle, .remote(...).result().
    def __init__(self):
        self.upper = servectl.get_handle("upper", sync=True)

    def __call__(self, request):
        return self.upper.remote(text=request.query_params.get("text", "")).result(timeout_s=30)
"""


def test_request_surface_return_types_and_sync_handle_inside_a_backend(ray_cluster, tmp_path, applied_dirs):
    config = write_config(tmp_path / "surface", SURFACE, models=SURFACE_MODELS)
    applied_dirs.append(config)
    result = run_cli(config, "apply", "--auto-approve")
    assert result.code == 0, result.output
    url = ray_cluster.url("/kinds")
    assert requests.get(url, params={"kind": "str"}, timeout=10).text == "text"
    assert requests.get(url, params={"kind": "bytes"}, timeout=10).content == b"raw bytes"
    assert requests.post(url, params={"kind": "dict"}, json={"x": [1]}, timeout=10).json() == {"a": 1, "echo": {"x": [1]}}
    assert requests.get(url, params={"kind": "list"}, timeout=10).json() == [1, 2, 3]
    custom = requests.get(url, params={"kind": "response"}, timeout=10)
    assert custom.status_code == 201 and custom.text == "custom" and custom.headers["x-kind"] == "response"
    assert requests.get(ray_cluster.url("/caller"), params={"text": "shout"}, timeout=30).text == "SHOUT"
