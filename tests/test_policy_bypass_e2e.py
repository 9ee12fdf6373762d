"""No request from outside reaches a backend except through an endpoint's route and policy.

A table of paths, methods and headers an attacker might try — encodings and
normalisations of the internal routes, Serve's own routes, forged internal
headers — against the front proxy and against Serve's own port; none is
answered by the 0-weight canary or the handle-only backend, while the
endpoint itself keeps answering from its stable backend.
"""
from __future__ import annotations

import http.client
import json

import pytest

from tests.conftest import RayCluster, run_cli, write_config

pytestmark = pytest.mark.ray

MAIN = '''
from servectl import Backend, Endpoint, LocalRay
LocalRay()
small = {"num_cpus": 0.1}
stable = Backend("stable", "models:Named", "stable", ray_actor_options=small)
canary = Backend("canary", "models:Named", "canary", ray_actor_options=small)
hidden = Backend("hidden", "models:Named", "hidden", ray_actor_options=small)
Endpoint("app", route="/app", traffic={stable: 1.0, canary: 0.0})
Endpoint("inner", backend=hidden)  # handle-only: no route
'''
MODELS = '''
class Named:
    def __init__(self, name):
        self.name = name

    async def __call__(self, request):
        return {"name": self.name, "headers": sorted(request.headers.keys()) if hasattr(request, "headers") else []}
'''

ATTACK_PATHS = [
    "/_servectl/canary", "/%5Fservectl/canary", "/%5fservectl/canary", "/%5F%73ervectl/canary", "/_servectl%2Fcanary",
    "/_servectl%2fhidden", "//_servectl/canary", "/app/../_servectl/canary", "/%2E%2E/_servectl/canary",
    "/_servectl/hidden", "/%5Fservectl/hidden", "/_servectl/canary/", "/_servectl/canary?x=1", "/-/routes",
    "/%2D/routes", "/-/%72outes", "/app/%2E%2E/_servectl/hidden",
]
FORGED_HEADERS = [
    {"x-servectl-backend": "canary"}, {"x-servectl-endpoint": "inner"}, {"x-servectl-proof": "0" * 64},
    {"x-servectl-shadow": "canary"}, {"x-servectl-role": "shadow"},
]


def request(port: int, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """One raw request (http.client sends the path exactly as given, unlike requests)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def answered_by(body: str) -> str:
    try:
        return json.loads(body).get("name", "")
    except (ValueError, AttributeError):
        return ""


def test_no_path_method_or_header_reaches_a_backend_around_its_endpoint(ray_cluster: RayCluster, tmp_path, applied_dirs):
    config = write_config(tmp_path / "bypass", MAIN, models=MODELS)
    applied_dirs.append(config)
    applied = run_cli(config, "apply", "--auto-approve")
    assert applied.code == 0, applied.output
    serve_port = json.loads((config / "servectl.state.json").read_text())["provider"]["live"]["serve_port"]

    status, body = request(ray_cluster.http_port, "GET", "/app")
    assert status == 200 and answered_by(body) == "stable"
    assert "x-servectl-proof" not in json.loads(body)["headers"]  # the backend never sees the proof

    tried = 0
    for port, where in ((ray_cluster.http_port, "front proxy"), (serve_port, "Serve's own port")):
        for path in ATTACK_PATHS:
            for method in ("GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
                status, body = request(port, method, path)
                tried += 1
                assert answered_by(body) not in ("canary", "hidden"), f"{method} {path} via {where}: {status} {body}"
                if port == ray_cluster.http_port:  # Serve's own port (127.0.0.1 only) lists its routes to who reaches it
                    assert "\"/_servectl/" not in body, f"{method} {path} via {where} lists routes: {body}"
        for headers in FORGED_HEADERS:
            for path in ("/app", "/_servectl/canary", "/%5Fservectl/hidden"):
                status, body = request(port, "GET", path, headers)
                tried += 1
                assert answered_by(body) in ("stable", ""), f"{path} {headers} via {where}: {status} {body}"
                if port == ray_cluster.http_port and path == "/app":
                    assert status == 200 and answered_by(body) == "stable"
    print(f"{tried} bypass attempts, none answered by canary or hidden")
    # Serve's health check still answers through the front proxy (the load balancer's check on AWS).
    assert request(ray_cluster.http_port, "GET", "/-/healthz")[0] == 200
