"""Traffic policies end to end: split, canary, shard-key affinity, zero downtime while traffic moves."""
from __future__ import annotations

import collections
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from servectl.traffic import backend_at, key_point
from tests.conftest import RayCluster, copy_example, run_cli, write_config
from tests.test_cli_e2e import replica_pids

pytestmark = pytest.mark.ray


def served_by(cluster: RayCluster, path: str, count: int, headers_for=None) -> list[str]:
    local = threading.local()

    def one(i: int) -> str:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        response = session.get(cluster.url(path), headers=headers_for(i) if headers_for else None, timeout=10)
        assert response.status_code == 200, response.text
        return response.text.removeprefix("served by ")

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def test_fifty_fifty_split_lands_within_5_points(ray_cluster, tmp_path, applied_dirs):
    config = copy_example("traffic_split", tmp_path)
    applied_dirs.append(config)
    assert run_cli(config, "apply", "--auto-approve").code == 0
    counts = collections.Counter(served_by(ray_cluster, "/fifty", 2000))
    print(f"2000 requests over 0.5/0.5: {dict(counts)}")
    assert set(counts) == {"backend1", "backend2"}
    assert abs(counts["backend1"] / 2000 - 0.5) <= 0.05


def test_canary_gets_some_but_few_and_weight_changes_are_in_place(ray_cluster, tmp_path, applied_dirs):
    config = copy_example("canary", tmp_path)
    applied_dirs.append(config)
    assert run_cli(config, "apply", "--var", "canary=0.01", "--auto-approve").code == 0
    counts = collections.Counter(served_by(ray_cluster, "/canary-test", 2000))
    print(f"2000 requests over 0.99/0.01: {dict(counts)}")
    assert 1 <= counts["new_backend"] <= 60

    pids_before = {app: replica_pids(ray_cluster, app) for app in ("default_backend", "new_backend")}
    planned = run_cli(config, "plan", "--var", "canary=0.1", "--detailed-exitcode")
    assert planned.code == 2
    assert "~ endpoint \"canary_endpoint\"" in planned.stdout
    assert "because: traffic: default_backend 0.99 → 0.9, new_backend 0.01 → 0.1" in planned.stdout
    assert "Plan: 0 to add, 1 to change, 0 to replace, 0 to destroy; replicas +0" in planned.stdout
    assert "traffic: canary_endpoint 0.9/0.1 (default_backend/new_backend)" in planned.stdout
    assert run_cli(config, "apply", "--var", "canary=0.1", "--auto-approve").code == 0
    counts = collections.Counter(served_by(ray_cluster, "/canary-test", 1000))
    assert 40 <= counts["new_backend"] <= 170
    assert {app: replica_pids(ray_cluster, app) for app in pids_before} == pids_before  # no replica restarted


def test_shard_keys_stick_and_only_keys_that_must_move_do(ray_cluster, tmp_path, applied_dirs):
    config = copy_example("session_affinity", tmp_path)
    applied_dirs.append(config)
    assert run_cli(config, "apply", "--auto-approve").code == 0
    keys = [f"session-{i}" for i in range(200)]

    def mapping() -> dict[str, str]:
        seen = served_by(ray_cluster, "/affinity", len(keys) * 5, lambda i: {"X-SERVE-SHARD-KEY": keys[i % len(keys)]})
        per_key: dict[str, set[str]] = collections.defaultdict(set)
        for i, backend in enumerate(seen):
            per_key[keys[i % len(keys)]].add(backend)
        assert all(len(backends) == 1 for backends in per_key.values()), "a key reached two backends"
        return {key: backends.pop() for key, backends in per_key.items()}

    before = mapping()
    assert set(before.values()) == {"backend_a", "backend_b"}
    state = json.loads((config / "servectl.state.json").read_text())
    segments = state["resources"]["endpoint.affinity"]["live"]["segments"]
    assert all(backend_at(segments, key_point(k)) == b for k, b in before.items())  # HTTP uses the documented hash

    assert run_cli(config, "apply", "--var", "a_share=0.8", "--auto-approve").code == 0
    after = mapping()
    moved = {k for k in keys if before[k] != after[k]}
    print(f"a_share 0.5 → 0.8: {len(moved)} of {len(keys)} keys moved")
    assert moved, "some of backend_b's keys must move to backend_a"
    assert all(before[k] == "backend_b" and after[k] == "backend_a" for k in moved)
    assert all(after[k] == "backend_a" for k in keys if before[k] == "backend_a")  # a grew: none of its keys moved


ROLLOUT = """
from servectl import Backend, Endpoint, LocalRay, var
LocalRay()
new_share = var("new_share", default=0.0)
third_share = var("third_share", default=0.0)
keep_existing = var("keep_existing", default=True)
opts = {"num_cpus": 0.25}
traffic = {}
if keep_existing:
    traffic[Backend("existing", "models:Named", "existing", ray_actor_options=opts)] = 1 - new_share - third_share
traffic[Backend("new", "newmodel:Named", "new", ray_actor_options=opts)] = new_share
if third_share:
    traffic[Backend("third", "models:Named", "third", ray_actor_options=opts)] = third_share
Endpoint("rollout", route="/rollout", traffic=traffic)
"""
NAMED = "class Named:\n    def __init__(self, name):\n        self.name = name\n    def __call__(self, request):\n        return f'served by {self.name}{VERSION}'\n"


def test_zero_dropped_requests_while_traffic_moves(ray_cluster, tmp_path, applied_dirs):
    config = write_config(
        tmp_path / "rollout", ROLLOUT,
        models="VERSION = ''\n" + NAMED, newmodel="VERSION = ''\n" + NAMED,
    )
    applied_dirs.append(config)
    assert run_cli(config, "apply", "--auto-approve").code == 0

    statuses: collections.Counter = collections.Counter()
    bodies: collections.Counter = collections.Counter()
    stop = threading.Event()

    def load() -> None:
        session = requests.Session()
        deadline = time.time() + 300
        while not stop.is_set() and time.time() < deadline:
            try:
                response = session.get(ray_cluster.url("/rollout"), timeout=10)
                statuses[response.status_code] += 1
                bodies[response.text] += 1
            except requests.RequestException as err:
                statuses[type(err).__name__] += 1

    steps = [
        ("weights 0.9/0.1", ["new_share=0.1"], None),
        ("weights 0.5/0.5", ["new_share=0.5"], None),
        ("weights 0/1.0", ["new_share=1.0"], None),
        ("add a backend with traffic", ["new_share=0.5", "third_share=0.5"], None),
        ("remove a backend", ["new_share=0.5", "third_share=0.5", "keep_existing=false"], None),
        ("replace a backend's code", ["new_share=0.5", "third_share=0.5", "keep_existing=false"], "VERSION = ' v2'\n"),
        ("first version again", [], "VERSION = ''\n"),
    ]
    workers = [threading.Thread(target=load) for _ in range(4)]
    started = time.time()
    for worker in workers:
        worker.start()
    try:
        for name, variables, new_code in steps:
            if new_code is not None:
                (config / "newmodel.py").write_text(new_code + NAMED)
            args = [a for v in variables for a in ("--var", v)]
            result = run_cli(config, "apply", *args, "--auto-approve")
            assert result.code == 0, f"{name}: {result.output}"
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    elapsed = time.time() - started
    total = sum(statuses.values())
    print(f"zero-downtime: {total} requests in {elapsed:.0f}s ({total / elapsed:.0f} req/s), outcomes {dict(statuses)}")
    print(f"served by: {dict(bodies)}")
    assert total / elapsed >= 50
    assert set(statuses) == {200}, statuses
    assert {"served by existing", "served by new", "served by third", "served by new v2"} <= set(bodies)


def test_incremental_rollout_example_moves_step_by_step_and_rolls_back(ray_cluster, tmp_path, applied_dirs):
    config = copy_example("incremental_rollout", tmp_path)
    applied_dirs.append(config)
    shares = {}
    for share in ("0.1", "0.5", "1.0", "0"):
        result = run_cli(config, "apply", "--var", f"new_share={share}", "--auto-approve")
        assert result.code == 0, result.output
        counts = collections.Counter(served_by(ray_cluster, "/incremental", 400))
        shares[share] = counts["new_backend"] / 400
    print(f"new_backend share per step: {shares}")
    assert 0.03 <= shares["0.1"] <= 0.2 and 0.4 <= shares["0.5"] <= 0.6
    assert shares["1.0"] == 1.0 and shares["0"] == 0.0
