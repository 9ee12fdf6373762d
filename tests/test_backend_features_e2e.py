"""Backend features of the seed, end to end: reconfigure without restarts."""
from __future__ import annotations

import os

import pytest
import requests

from tests.conftest import copy_example, run_cli
from tests.test_cli_e2e import replica_pids

pytestmark = pytest.mark.ray


def answers(cluster, path: str, count: int) -> set[str]:
    session = requests.Session()
    return {session.get(cluster.url(path), timeout=10).text for _ in range(count)}


def test_reconfigure_changes_live_replicas_and_reaches_new_ones(ray_cluster, tmp_path, applied_dirs):
    config = copy_example("reconfigure", tmp_path)
    applied_dirs.append(config)
    assert run_cli(config, "apply", "--var", "threshold=0.0", "--auto-approve").code == 0
    assert answers(ray_cluster, "/threshold", 20) == {"true"}
    pids = replica_pids(ray_cluster, "threshold")

    planned = run_cli(config, "plan", "--var", "threshold=1.0")
    assert "~ user_config = {\"threshold\": 0.0} → {\"threshold\": 1.0}" in planned.stdout
    assert "user_config changed (reconfigure() runs on every replica)" in planned.stdout
    assert "1 to change, 0 to replace" in planned.stdout

    assert run_cli(config, "apply", "--var", "threshold=1.0", "--auto-approve").code == 0
    assert answers(ray_cluster, "/threshold", 20) == {"false"}
    assert replica_pids(ray_cluster, "threshold") == pids  # reconfigured in place, not restarted

    # Replicas added later are reconfigured when they start.
    assert run_cli(config, "apply", "--var", "threshold=1.0", "--var", "replicas=3", "--auto-approve").code == 0
    grown = replica_pids(ray_cluster, "threshold")
    assert len(grown) == 3 and pids <= grown
    assert answers(ray_cluster, "/threshold", 60) == {"false"}


def test_omp_threads_reach_the_replica_before_numpy_loads(ray_cluster, tmp_path, applied_dirs):
    config = copy_example("omp_threads", tmp_path)
    applied_dirs.append(config)
    assert run_cli(config, "apply", "--auto-approve").code == 0
    parallel = requests.get(ray_cluster.url("/parallel"), timeout=30).json()
    default = requests.get(ray_cluster.url("/default"), timeout=30).json()
    print(f"omp_num_threads=2: {parallel}; default: {default}")
    # OpenBLAS never starts more threads than the machine has cores.
    assert parallel == {"OMP_NUM_THREADS": "2", "blas_threads": [min(2, os.cpu_count())]}
    assert default == {"OMP_NUM_THREADS": "1", "blas_threads": [1]}  # Ray's default for a replica under 1 CPU

    planned = run_cli(config, "plan", "--var", "threads=1")
    assert "-/+ backend \"parallel_backend\"" in planned.stdout
    assert "env_vars.OMP_NUM_THREADS '2' → '1' (replicas restart)" in planned.stdout
    assert run_cli(config, "apply", "--var", "threads=1", "--auto-approve").code == 0
    assert requests.get(ray_cluster.url("/parallel"), timeout=30).json() == {"OMP_NUM_THREADS": "1", "blas_threads": [1]}


BROKEN_BATCH = """
from servectl import Backend, Endpoint, LocalRay
LocalRay()
Endpoint("short", route="/short", backend=Backend("short", "models:Short", max_batch_size=4, ray_actor_options={"num_cpus": 0.25}))
"""


def _concurrent(cluster, path: str, count: int) -> list[requests.Response]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: requests.get(cluster.url(path), timeout=30), range(count)))


def test_batching_lists_in_lists_out_and_resizes_in_place(ray_cluster, tmp_path, applied_dirs):
    config = copy_example("batching", tmp_path)
    applied_dirs.append(config)
    assert run_cli(config, "apply", "--auto-approve").code == 0
    responses = _concurrent(ray_cluster, "/increment", 30)
    assert all(r.status_code == 200 for r in responses)
    sizes = [r.json()["batch_size"] for r in responses]
    print(f"batch sizes at max_batch_size=5: {sorted(sizes)}")
    assert max(sizes) <= 5 and max(sizes) > 1
    assert len({r.json()["count"] for r in responses}) == 30  # every request counted once
    pids = replica_pids(ray_cluster, "counter1")

    planned = run_cli(config, "plan", "--var", "max_batch_size=10")
    assert "~ max_batch_size = 5 → 10" in planned.stdout and "1 to change, 0 to replace" in planned.stdout
    assert run_cli(config, "apply", "--var", "max_batch_size=10", "--auto-approve").code == 0
    assert replica_pids(ray_cluster, "counter1") == pids
    sizes = [r.json()["batch_size"] for r in _concurrent(ray_cluster, "/increment", 40)]
    print(f"batch sizes at max_batch_size=10: {sorted(sizes)}")
    assert max(sizes) <= 10 and max(sizes) > 5


def test_wrong_length_batch_is_a_500_not_a_hang(ray_cluster, tmp_path, applied_dirs):
    from tests.conftest import write_config

    config = write_config(
        tmp_path / "short", BROKEN_BATCH,
        models="class Short:\n    def __call__(self, requests):\n        return requests[:-1]\n",
    )
    applied_dirs.append(config)
    assert run_cli(config, "apply", "--auto-approve").code == 0
    import time

    started = time.time()
    responses = _concurrent(ray_cluster, "/short", 8)
    assert time.time() - started < 10
    assert {r.status_code for r in responses} == {500}


def test_two_half_gpu_backends_share_one_gpu(ray_cluster, tmp_path, applied_dirs):
    # The fixture's cluster has 2 logical GPUs: Ray assigns them like real ones
    # (CUDA_VISIBLE_DEVICES), without any CUDA work. A real GPU check is in bench/README.md.
    config = copy_example("gpu_fractional", tmp_path)
    applied_dirs.append(config)
    planned = run_cli(config, "plan")
    assert planned.code == 0, planned.output
    assert "GPU 1/2" in planned.stdout
    assert "GPU 0: vision_a 0.5 + vision_b 0.5 (1 of 1 used)" in planned.stdout

    assert run_cli(config, "apply", "--auto-approve").code == 0
    a = requests.get(ray_cluster.url("/vision_a"), timeout=30).json()
    b = requests.get(ray_cluster.url("/vision_b"), timeout=30).json()
    print(f"vision_a: {a}; vision_b: {b}")
    assert a["pid"] != b["pid"]
    assert a["CUDA_VISIBLE_DEVICES"] == b["CUDA_VISIBLE_DEVICES"] == "0"
    assert a["gpu_ids"] == b["gpu_ids"] == ["0"]
