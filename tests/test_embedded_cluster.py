"""The README's main job: servectl starts its own Ray, serves, and stops it by PID on destroy."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
import requests

from servectl.providers.embedded_cluster import descendants, free_ports, pid_alive
from servectl.providers.processes import ProcessIdentity, session_members
from tests.conftest import SERVECTL, copy_example, wait_for_http

pytestmark = pytest.mark.ray


def test_embedded_cluster_lifecycle(tmp_path):
    config = copy_example("quickstart", tmp_path)
    (port,) = free_ports(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVECTL_RAY", "RAY_AUTH"))}
    env.update(SERVECTL_HTTP_PORT=str(port), NO_COLOR="1", COLUMNS="200")
    # What servectl's own environment holds must not reach the cluster (and so every replica).
    env.update(SERVECTL_VAR_unrelated="leaky-variable-value", AWS_SECRET_ACCESS_KEY="leaky-credential-value")

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
        leader = ProcessIdentity.from_dict(record["identity"])
        members = session_members(leader)
        assert set(record_tree) <= set(members)  # the session holds every process of the cluster
        for pid in members:
            environ = open(f"/proc/{pid}/environ", "rb").read()
            assert b"leaky-" not in environ and b"SERVECTL_VAR_" not in environ and b"AWS_SECRET" not in environ
        # Ray's internal ports take connections from this machine only. The one exception is Ray Serve's: each
        # replica opens its inter-deployment gRPC server on "[::]:0" in its own code (ray/serve/_private/replica.py).
        listeners = listening_sockets(members)
        assert any(port == record["dashboard_port"] for _, _, port in listeners), listeners
        open_to_all = [(title, host, port) for title, host, port in listeners if host not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")]
        replicas = [title for title, _, _ in open_to_all if title.startswith("ray::ServeReplica")]
        assert len(open_to_all) == len(replicas) == 1, open_to_all
        # Ray opens its temp dir to everyone; the private dir around it is the owner's alone.
        assert os.stat(record["private_dir"]).st_mode & 0o777 == 0o700
        assert record["temp_dir"].startswith(record["private_dir"] + "/")
    finally:
        destroyed = cli("destroy", "--auto-approve")
    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    assert "stopped the embedded Ray head" in destroyed.stdout
    assert not pid_alive(record["pid"])
    assert session_members(leader) == []
    assert not os.path.exists(record["private_dir"])
    assert not [p for p in record_tree if pid_alive(p)]  # workers too, though they retitle themselves
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/hello", timeout=5)


def test_a_replica_no_node_can_hold_fails_fast_once_the_cluster_is_up(tmp_path):
    """The plan cannot know the embedded head's memory before it runs; apply places again once it does."""
    config = copy_example("quickstart", tmp_path)
    main = (config / "main.py").read_text()
    assert '"num_cpus": 0.25' in main
    (config / "main.py").write_text(main.replace('"num_cpus": 0.25', '"num_cpus": 0.25, "memory": 2**49'))
    (port,) = free_ports(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVECTL_RAY", "RAY_AUTH"))}
    env.update(SERVECTL_HTTP_PORT=str(port), NO_COLOR="1", COLUMNS="200")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([SERVECTL, "-C", str(config), *args], capture_output=True, text=True, env=env, timeout=300)

    assert cli("plan").returncode == 0  # projected from LocalRay settings: memory unknown
    started = time.monotonic()
    applied = cli("apply", "--auto-approve", "--timeout", "300")
    try:
        assert applied.returncode == 1, applied.stdout + applied.stderr
        error = applied.stderr.strip()
        assert error.startswith("Error: main.py:") and "cannot be placed on the cluster" in error and "\n" not in error
        assert "memory 524288.00 GiB" in error
        assert time.monotonic() - started < 120  # not the 300 s health timeout
        assert not (config / "servectl.state.json").exists() or not json.loads(
            (config / "servectl.state.json").read_text())["resources"]
    finally:
        assert cli("destroy", "--auto-approve").returncode == 0


def listening_sockets(pids: list[int]) -> list[tuple[str, str, int]]:
    """The TCP sockets ``pids`` listen on: (process title, address, port), from /proc/net/tcp{,6} and each
    process's descriptors."""
    import ipaddress

    listening: dict[str, tuple[str, int]] = {}
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        with open(table, encoding="ascii") as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[3] != "0A":  # LISTEN
                    continue
                raw, port = fields[1].split(":")
                packed = bytes.fromhex(raw)
                # The kernel prints each 32-bit word in host (little-endian) order.
                packed = b"".join(packed[i:i + 4][::-1] for i in range(0, width, 4))
                address = ipaddress.ip_address(packed)
                host = str(address.ipv4_mapped or address) if address.version == 6 else str(address)
                if address.version == 6 and address.ipv4_mapped:
                    host = f"::ffff:{address.ipv4_mapped}"
                listening[fields[9]] = (host, int(port, 16))
    found = []
    for pid in pids:
        try:
            title = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode(errors="replace")
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:[") and target[8:-1] in listening:
                    found.append((title, *listening[target[8:-1]]))
        except OSError:
            continue
    return found
