"""FastAPI / ASGI ingress backends (issue #17, item 1), end to end on the session's Ray, through the front proxy and
through handles: the endpoint's route is the app's prefix, and everything an app answers passes through unchanged."""
from __future__ import annotations

import collections
import json
import time

import pytest
import requests

import servectl
from tests.conftest import copy_example, run_cli, scrape

pytestmark = pytest.mark.ray


def test_a_fastapi_app_is_a_backend_under_its_endpoints_prefix(ray_cluster, tmp_path, applied_dirs):
    config = copy_example("fastapi_ingress", tmp_path)
    applied_dirs.append(config)
    applied = run_cli(config, "apply", "--auto-approve")
    assert applied.code == 0, applied.output
    url = ray_cluster.url

    # Path parameters, query strings, bodies, status codes and headers, as the app answers them.
    got = requests.get(url("/api/items/7?q=x"), timeout=30)
    assert (got.status_code, got.json()) == (200, {"item_id": 7, "q": "x", "version": "v1"})
    made = requests.post(url("/api/items"), json={"name": "a", "price": 2}, timeout=30)
    assert (made.status_code, made.json()) == (201, {"id": 1, "name": "a", "price": 2.0, "version": "v1"})
    invalid = requests.get(url("/api/items/not-a-number"), timeout=30)
    assert invalid.status_code == 422 and invalid.json()["detail"][0]["loc"] == ["path", "item_id"]
    missing = requests.get(url("/api/missing"), timeout=30)
    assert (missing.status_code, missing.json(), missing.headers["x-reason"]) == (404, {"detail": "no such thing"}, "missing")
    echoed = requests.get(url("/api/echo-headers"), headers={"x-custom": "yes", "x-servectl-route": "/forged",
                                                           "x-servectl-proof": "0" * 64}, timeout=30).json()
    # The app sees the public prefix as its root_path and none of servectl's proof or route headers.
    assert echoed["x-custom"] == "yes" and echoed["root_path"] == "/api"
    assert not {"x-servectl-proof", "x-servectl-route", "x-servectl-shadow"} & set(echoed["servectl"]), echoed
    root = requests.get(url("/api"), timeout=30)
    assert (root.status_code, root.json()) == (200, {"version": "v1"})

    # FastAPI's own pages, at their public URLs; a redirect names the public URL too.
    docs = requests.get(url("/api/docs"), timeout=30)
    assert docs.status_code == 200 and "/api/openapi.json" in docs.text
    schema = requests.get(url("/api/openapi.json"), timeout=30)
    assert schema.status_code == 200 and "/items/{item_id}" in schema.json()["paths"]
    moved = requests.get(url("/api/old"), allow_redirects=False, timeout=30)
    assert moved.status_code == 307 and moved.headers["location"].endswith("/api/items/1"), moved.headers
    assert requests.get(url("/api/old"), timeout=30).json()["item_id"] == 1

    # A plain ASGI app is a backend too; routes of two endpoints never shadow each other.
    assert requests.get(url("/health-app"), timeout=30).json() == {"ok": True}
    assert requests.get(url("/health-app/"), timeout=30).json() == {"ok": True}
    assert requests.get(url("/api2/items/7"), timeout=30).status_code == 404

    # Not past the front proxy: Serve's own port has the internal route, but no route proof.
    serve_port = json.loads((config / "servectl.state.json").read_text())["provider"]["live"]["serve_port"]
    direct = requests.get(f"http://127.0.0.1:{serve_port}/_servectl/api_v1/items/7", timeout=30)
    assert direct.status_code == 404, direct.text

    # Through a handle: the app answers at "/" with the same code.
    servectl.connect(str(config))
    answer = servectl.get_handle("api").remote().result()
    assert (answer.status, answer.json()) == (200, {"version": "v1"})
    # Any route of the app, by path and method; keyword arguments are the query string, the argument the body.
    item = servectl.get_handle("api").options(path="/items/7").remote(q="x").result()
    assert (item.status, item.json()) == (200, {"item_id": 7, "q": "x", "version": "v1"})
    made = servectl.get_handle("api").options(path="/items", method="POST").remote({"name": "b", "price": 3}).result()
    assert made.status == 201 and made.json()["name"] == "b", made.text


def test_splits_shard_keys_and_shadows_apply_to_every_path_under_the_prefix(ray_cluster, tmp_path, applied_dirs):
    config = copy_example("fastapi_ingress", tmp_path)
    applied_dirs.append(config)
    applied = run_cli(config, "apply", "--auto-approve", "--var", "v2_share=0.5", "--var", "shadow=1.0")
    assert applied.code == 0, applied.output
    shadows_before = _shadow_requests(ray_cluster)
    versions: collections.Counter = collections.Counter()
    for i in range(120):
        path = "/api/items/3" if i % 2 else "/api"
        answer = requests.get(ray_cluster.url(path), timeout=30)
        assert answer.status_code == 200, answer.text
        versions[answer.json()["version"]] += 1
    assert versions["v1"] > 30 and versions["v2"] > 30, versions  # 0.5/0.5 over both paths
    for key in ("user-1", "user-2", "user-3"):
        seen = {requests.get(ray_cluster.url(f"/api/items/{n}"), headers={"x-serve-shard-key": key},
                             timeout=30).json()["version"] for n in range(15)}
        assert len(seen) == 1, (key, seen)  # a shard key stays on one version, whatever the path
    # Every request that reached api_v1 was also copied to api_v2 (shadow 1.0), counted by api_v2 as a shadow
    # (Ray exports the series every few seconds: wait for them, within a deadline).
    deadline = time.monotonic() + 60
    copies = _shadow_requests(ray_cluster) - shadows_before
    while copies < versions["v1"] and time.monotonic() < deadline:
        time.sleep(2)
        copies = _shadow_requests(ray_cluster) - shadows_before
    assert copies >= versions["v1"], (copies, versions)


def _shadow_requests(cluster) -> float:
    samples = scrape(cluster, "ray_servectl_requests")
    return sum(value for key, value in samples.items()
               if ("backend", "api_v2") in key and ("role", "shadow") in key)
