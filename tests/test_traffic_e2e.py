"""Traffic policies end to end: split, canary, shard-key affinity (load through applies: tests/reliability)."""
from __future__ import annotations

import collections
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from servectl.routing.traffic import backend_at, key_point
from tests.conftest import RayCluster, copy_example, run_cli
from tests.test_cli_e2e import replica_pids

pytestmark = pytest.mark.ray


@pytest.fixture(autouse=True)
def ingress(request, monkeypatch) -> str:
    """The data path a test runs on, picked as a user would with SERVECTL_INGRESS: the default (the front proxy
    straight to the replicas), or — for the tests marked BOTH_PATHS — the fallback (through Serve's proxy) too."""
    path = getattr(request, "param", "direct")
    monkeypatch.setenv("SERVECTL_INGRESS", path)
    return path


# The split and the shard keys — the traffic math itself — on both paths; the canary and the rollout example,
# which add weight changes on top of the same math, on the default only (each run of the four costs ~100 s).
BOTH_PATHS = pytest.mark.parametrize("ingress", ["direct", "python"], indirect=True)


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


@BOTH_PATHS
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


@BOTH_PATHS
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
