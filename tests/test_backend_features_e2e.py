"""Backend features of the seed, end to end: reconfigure without restarts."""
from __future__ import annotations

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
