"""The README's main job: servectl starts its own Ray, serves, and stops it by PID on destroy."""
from __future__ import annotations

import json
import os
import subprocess

import pytest
import requests

from servectl.providers.embedded_cluster import descendants, free_ports, pid_alive, pids_mentioning
from tests.conftest import SERVECTL, copy_example, wait_for_http

pytestmark = pytest.mark.ray


def test_embedded_cluster_lifecycle(tmp_path):
    config = copy_example("quickstart", tmp_path)
    (port,) = free_ports(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVECTL_RAY", "RAY_AUTH"))}
    env.update(SERVECTL_HTTP_PORT=str(port), NO_COLOR="1", COLUMNS="200")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([SERVECTL, "-C", str(config), *args], capture_output=True, text=True, env=env, timeout=300)

    planned = cli("plan")
    assert planned.returncode == 0, planned.stderr
    assert "cluster not started yet" in planned.stdout  # plan starts nothing
    assert not (config / ".servectl" / "cluster.json").exists()

    applied = cli("apply", "--auto-approve")
    try:
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert "starting the embedded Ray head" in applied.stdout
        record = json.loads((config / ".servectl" / "cluster.json").read_text())
        assert record["gcs_address"].startswith("127.0.0.1:") and pid_alive(record["pid"])
        assert oct(os.stat(record["token_path"]).st_mode & 0o777) == "0o600"
        response = wait_for_http(f"http://127.0.0.1:{port}/hello")
        assert response.text == "Hello from servectl, world!"
        assert "No changes." in cli("plan").stdout
        record_tree = descendants(record["pid"])
        assert len(record_tree) > 3  # gcs, raylet, agents, proxy, replica…
    finally:
        destroyed = cli("destroy", "--auto-approve")
    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    assert "stopped the embedded Ray head" in destroyed.stdout
    assert not pid_alive(record["pid"])
    assert pids_mentioning(record["temp_dir"]) == []
    assert not [p for p in record_tree if pid_alive(p)]  # workers too, though they retitle themselves
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/hello", timeout=5)
