"""Metrics and `servectl status`: the seed's metric list per backend, servectl's own, a custom one, read back."""
from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from servectl.providers.embedded_cluster import free_ports
from tests.conftest import copy_example, run_cli, scrape

pytestmark = pytest.mark.ray


def totals(cluster, prefix: str, **match: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in scrape(cluster, prefix).items():
        labels = dict(key[1:])
        if all(labels.get(k) == v for k, v in match.items()):
            out[key[0]] = out.get(key[0], 0.0) + value
    return out


def wait_for(check, timeout: float = 30):
    deadline = time.time() + timeout
    while True:
        value = check()
        if value or time.time() > deadline:
            return value
        time.sleep(0.5)


def test_seed_metrics_per_backend_custom_metric_and_status(ray_cluster, tmp_path, applied_dirs):
    config = copy_example("metrics", tmp_path)
    applied_dirs.append(config)
    assert run_cli(config, "apply", "--auto-approve").code == 0
    session = requests.Session()
    url = ray_cluster.url("/excellent")
    codes = [session.get(url, params=params, timeout=10).status_code
             for params in [{}] * 12 + [{"excellent": "1"}] * 5 + [{"fail": "1"}] * 3]
    assert codes == [200] * 17 + [500] * 3

    # The custom metric, tagged with servectl.get_current_backend_tag(), in the same scrape.
    assert wait_for(lambda: totals(ray_cluster, "ray_excellent_requests", backend="excellent")
                    .get("ray_excellent_requests_total") == 5)

    # The seed's list, as Ray Serve's series for this backend (deployment = backend name).
    def seed_series():
        serve = totals(ray_cluster, "ray_serve_", deployment="excellent")
        if serve.get("ray_serve_deployment_request_counter_total", 0) < 17 or "ray_serve_deployment_error_counter_total" not in serve:
            return None
        return serve
    serve = wait_for(seed_series)
    assert serve, {k: v for k, v in totals(ray_cluster, "ray_serve_", deployment="excellent").items() if "bucket" not in k}
    assert serve["ray_serve_deployment_request_counter_total"] == 17  # processed without error
    assert serve["ray_serve_deployment_error_counter_total"] == 3
    assert serve["ray_serve_deployment_replica_starts_total"] == 2
    assert serve["ray_serve_deployment_processing_latency_ms_count"] == 20
    assert "ray_serve_replica_processing_queries" in serve
    # servectl's own: per endpoint/backend, and the replica-side queueing Ray Serve 2.x lacks.
    def own_series():
        found = totals(ray_cluster, "ray_servectl_", backend="excellent")
        ready = found.get("ray_servectl_queuing_latency_ms_count", 0) >= 20 and "ray_servectl_replica_queued_queries" in found
        return found if ready else None
    own = wait_for(own_series)
    assert own, totals(ray_cluster, "ray_servectl_", backend="excellent")
    assert own["ray_servectl_requests_total"] == 20
    assert own["ray_servectl_errors_total"] == 3
    assert own["ray_servectl_request_latency_ms_count"] == 20
    assert "ray_servectl_replica_queued_queries" in own
    # A router's series comes from handle calls (HTTP on the direct path reaches the replica without one): one
    # call through servectl's handle, after the counts above and servectl's own.
    import servectl

    servectl.connect(str(config))
    assert servectl.get_handle("excellent").remote().result(timeout_s=60) == "ok"
    names = ("ray_serve_num_http_requests_total", "ray_serve_num_router_requests_total", "ray_serve_deployment_queued_queries")

    def cluster_series():
        found = totals(ray_cluster, "ray_serve_")
        return found if all(name in found for name in names) else None
    everywhere = wait_for(cluster_series) or totals(ray_cluster, "ray_serve_")
    for name in names:
        assert name in everywhere, name

    # status, under a steady load of ~10 req/s.
    stop = threading.Event()

    def load():
        while not stop.is_set():
            session.get(url, timeout=10)
            time.sleep(0.1)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        time.sleep(2)
        shown = run_cli(config, "status", "--json", "--window", "4")
        text = run_cli(config, "status", "--window", "2")
    finally:
        stop.set()
        loader.join()
    assert shown.code == 0, shown.output
    report = json.loads(shown.stdout)
    print(json.dumps(report, indent=1))
    (backend,) = report["backends"]
    assert (backend["name"], backend["running"], backend["target"], backend["health"]) == ("excellent", 2, 2, "HEALTHY")
    assert 3 <= backend["traffic"]["requests_per_s"] <= 15
    assert backend["traffic"]["error_ratio"] == 0
    assert 0 < backend["traffic"]["p50_ms"] <= backend["traffic"]["p99_ms"]
    (endpoint,) = report["endpoints"]
    assert endpoint["weights"] == {"excellent": 1.0} and endpoint["route"] == "/excellent"
    assert 3 <= endpoint["traffic"]["requests_per_s"] <= 15
    assert endpoint["traffic"]["requests_total"] >= 20 and endpoint["traffic"]["errors_total"] == 3
    assert text.code == 0, text.output
    assert "Endpoints" in text.stdout and "Backends" in text.stdout
    assert "excellent 1" in text.stdout and "2/2" in text.stdout and "HEALTHY" in text.stdout


def test_status_of_an_unreachable_cluster_is_an_error_not_an_empty_report(ray_cluster, tmp_path, applied_dirs):
    config = copy_example("quickstart", tmp_path)
    applied_dirs.append(config)
    empty = run_cli(config, "status")
    assert empty.code == 1
    assert empty.stderr.strip() == "Error: nothing is applied here: the state is empty (run `servectl apply`)"

    assert run_cli(config, "apply", "--auto-approve").code == 0
    state_path = config / "servectl.state.json"
    applied_state = state_path.read_text()
    gone = json.loads(applied_state)
    (port,) = free_ports(1)
    gone["provider"]["address"] = f"127.0.0.1:{port}"  # the cluster this state was applied to went away
    state_path.write_text(json.dumps(gone))
    try:
        result = run_cli(config, "status", "--json")
        assert result.code == 1
        assert result.stdout == ""
        assert result.stderr.strip() == (
            f"Error: cannot reach the Ray cluster at 127.0.0.1:{port}: nothing listens there (is it running?)"
        )
    finally:
        state_path.write_text(applied_state)
