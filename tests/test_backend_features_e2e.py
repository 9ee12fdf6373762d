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


def test_two_backends_pin_different_versions_of_one_package(ray_cluster, tmp_path, applied_dirs):
    config = copy_example("dependencies", tmp_path)
    applied_dirs.append(config)
    planned = run_cli(config, "plan")
    assert "+ pip = [\"tabulate==0.8.10\"]" in planned.stdout, planned.output
    applied = run_cli(config, "apply", "--auto-approve", timeout=600)
    assert applied.code == 0, applied.output
    old = requests.get(ray_cluster.url("/old"), timeout=30).json()
    new = requests.get(ray_cluster.url("/new"), timeout=30).json()
    assert (old["version"], new["version"]) == ("0.8.10", "0.9.0")
    assert "version  0.9.0" in new["table"]
    with pytest.raises(ImportError):  # the CLI's own environment never got it
        import tabulate  # noqa: F401


WORKER_ONLY = '''
from servectl import Backend, Endpoint, LocalRay, var
LocalRay()
version = var("version", default="1")
extra = var("extra", default="none")
greeter = Backend("greeter", "worker_models:Greeter", code_version=version, ray_actor_options={"num_cpus": 0.1})
Endpoint("greet", route="/greet", backend=greeter)
if extra == "missing":
    Backend("ghost", "no_such_module:Model", ray_actor_options={"num_cpus": 0.1})
if extra == "conda":
    Backend("tf1", "models:Model", conda="servectl-no-such-env", ray_actor_options={"num_cpus": 0.1})
'''


def test_worker_only_backends_are_hashed_by_path_and_version_and_checked_on_the_workers(ray_cluster, tmp_path, applied_dirs):
    import importlib.util
    import shutil

    from tests.conftest import file_digest, write_config

    assert importlib.util.find_spec("worker_models") is None  # only the cluster's workers have it
    config = write_config(tmp_path / "worker_only", WORKER_ONLY, models="class Model:\n    def __call__(self, r):\n        return 1\n")
    applied_dirs.append(config)
    assert run_cli(config, "apply", "--auto-approve").code == 0
    assert requests.get(ray_cluster.url("/greet"), timeout=30).json()["greeting"] == "hello from the workers"

    assert run_cli(config, "plan", "--detailed-exitcode").code == 0  # same path, same version: no change
    bumped = run_cli(config, "plan", "--var", "version=2")
    assert "-/+ backend \"greeter\"" in bumped.stdout
    assert "version '1' → '2'" in bumped.stdout, bumped.stdout

    state = file_digest(config / "servectl.state.json")
    ghost = run_cli(config, "plan", "--var", "extra=missing")
    assert ghost.code == 1
    assert ghost.stderr.strip().splitlines() == [
        "Error: main.py:9: backend.ghost: 'no_such_module' cannot be imported on the workers "
        "(No module named 'no_such_module'); install it on the cluster's nodes or list it in pip=[...]"
    ]
    assert run_cli(config, "apply", "--var", "extra=missing", "--auto-approve").code == 1

    conda = run_cli(config, "plan", "--var", "extra=conda")
    assert conda.code == 1
    if shutil.which("conda") is None:
        expected = ("conda env 'servectl-no-such-env' cannot be used: conda is not installed on the cluster's nodes "
                    "(install it there, or use pip=[...] instead)")
    else:
        expected = "conda env 'servectl-no-such-env' does not exist on the cluster's nodes"
    assert conda.stderr.strip().startswith(f"Error: main.py:11: backend.tf1: {expected}"), conda.stderr
    assert file_digest(config / "servectl.state.json") == state  # refused plans change nothing
