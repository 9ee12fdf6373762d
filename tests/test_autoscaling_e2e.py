"""Replica autoscaling on the local provider: load raises the replica count, idleness lowers it, no drift."""
from __future__ import annotations

import threading
import time

import pytest
import requests

from tests.conftest import run_cli, write_config
from tests.test_cli_e2e import serve_details

pytestmark = pytest.mark.ray

MAIN = '''
from servectl import Backend, Endpoint, LocalRay
LocalRay()
elastic = Backend(
    "elastic", "models:Slow", ray_actor_options={"num_cpus": 0.1},
    autoscaling={
        "min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 1,
        # Short windows so a test sees both directions in seconds (Serve's defaults: 10 s, 30 s, 30 s, 600 s).
        "metrics_interval_s": 0.5, "look_back_period_s": 2, "upscale_delay_s": 0.5, "downscale_delay_s": 3,
    },
)
Endpoint("elastic", route="/elastic", backend=elastic)
'''
MODELS = '''
import asyncio

class Slow:
    async def __call__(self, request):
        await asyncio.sleep(0.3)
        return "ok"
'''


def running_replicas(cluster) -> int:
    deployment = serve_details(cluster)["applications"]["elastic"]["deployments"]["elastic"]
    return sum(1 for r in deployment["replicas"] if str(getattr(r["state"], "value", r["state"])) == "RUNNING")


def wait_for(condition, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen within {timeout}s")


def test_load_raises_replicas_idleness_lowers_them_and_neither_is_drift(ray_cluster, tmp_path, applied_dirs):
    config = write_config(tmp_path / "elastic", MAIN, models=MODELS)
    applied_dirs.append(config)
    planned = run_cli(config, "plan")
    assert planned.code == 0, planned.output
    assert "+ autoscaling.max_replicas = 3" in planned.stdout and "+ num_replicas = null" not in planned.stdout
    assert "replicas +1 (0 → 1, up to 3 by autoscaling)" in planned.stdout
    applied = run_cli(config, "apply", "--auto-approve")
    assert applied.code == 0, applied.output
    assert running_replicas(ray_cluster) == 1

    stop = threading.Event()
    answers: list[int] = []

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                answers.append(session.get(ray_cluster.url("/elastic"), timeout=30).status_code)

    clients = [threading.Thread(target=client) for _ in range(6)]
    for thread in clients:
        thread.start()
    try:
        up = wait_for(lambda: running_replicas(ray_cluster) == 3, 60, "scaling up to 3 replicas under load")
        # The autoscaler's replica count is not drift: the state records the range, not a count.
        drift = run_cli(config, "drift")
        assert drift.code == 0, drift.output
    finally:
        stop.set()
        for thread in clients:
            thread.join()
    down = wait_for(lambda: running_replicas(ray_cluster) == 1, 60, "scaling down to 1 replica when idle")
    print(f"requests={len(answers)} up_in={up:.1f}s down_in={down:.1f}s")
    assert answers and set(answers) == {200}
    assert run_cli(config, "plan", "--detailed-exitcode").code == 0

    # Changing the range is an in-place update, like num_replicas.
    (config / "main.py").write_text(MAIN.replace('"min_replicas": 1', '"min_replicas": 2'))
    replanned = run_cli(config, "plan", "--detailed-exitcode")
    assert replanned.code == 2, replanned.output
    assert '~ backend "elastic"' in replanned.stdout and "min_replicas = 1 → 2" in replanned.stdout
    assert run_cli(config, "apply", "--auto-approve").code == 0
    assert running_replicas(ray_cluster) == 2
