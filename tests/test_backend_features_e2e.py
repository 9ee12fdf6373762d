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
