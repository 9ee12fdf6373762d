"""A Ray head node that servectl starts, owns and stops for one config directory.

It runs on its own ports (free ones picked at start) and its own short temp
dir, with token auth and the dashboard on 127.0.0.1, so it never meets another
Ray on the machine. It is stopped by the PIDs it started, never ``ray stop``.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Optional

from servectl.errors import ProviderError

RUNTIME_DIR = ".servectl"


def free_ports(count: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
        ports.append(sock.getsockname()[1])
    for sock in sockets:
        sock.close()
    return ports


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line names ``text`` (our unique temp dir)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if text.encode() in handle.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def descendants(root: int) -> list[int]:
    """Every process below ``root`` in the process tree, found through /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


METRICS_REPORT_INTERVAL_MS = 1000


@dataclass
class ClusterRecord:
    pid: int
    gcs_address: str
    temp_dir: str
    token_path: str
    dashboard_port: int
    num_cpus: float
    num_gpus: int
    started_at: float
    metrics_port: int = 0  # Prometheus text of this node's Ray (and servectl) metrics


class EmbeddedCluster:
    """Start/find/stop the head node recorded in ``DIR/.servectl/cluster.json``."""

    def __init__(self, runtime_dir: str) -> None:
        self.runtime_dir = os.path.abspath(runtime_dir)
        self.record_path = os.path.join(self.runtime_dir, "cluster.json")
        self.log_path = os.path.join(self.runtime_dir, "ray-start.log")
        digest = hashlib.sha256(self.runtime_dir.encode()).hexdigest()[:10]
        # Ray's unix socket paths must stay under 108 bytes: keep the temp dir short.
        self.temp_dir = os.path.join("/tmp", f"servectl-{digest}")

    @classmethod
    def for_config_dir(cls, config_dir: str) -> "EmbeddedCluster":
        return cls(os.path.join(config_dir, RUNTIME_DIR))

    def record(self) -> Optional[ClusterRecord]:
        """The running cluster, or None if none was started or it has died."""
        try:
            with open(self.record_path, encoding="utf-8") as handle:
                record = ClusterRecord(**json.load(handle))
        except (FileNotFoundError, ValueError, TypeError):
            return None
        host, _, port = record.gcs_address.rpartition(":")
        if pid_alive(record.pid) and port_open(host, int(port)):
            return record
        return None

    def start(
        self, num_cpus: float, num_gpus: int, resources: dict[str, float], timeout_s: float = 90,
        dashboard_port: Optional[int] = None,
    ) -> ClusterRecord:
        existing = self.record()
        if existing:
            return existing
        self._kill_leftovers()
        os.makedirs(self.runtime_dir, mode=0o700, exist_ok=True)
        token_path = os.path.join(self.runtime_dir, "ray-token")
        if not os.path.exists(token_path):
            fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
        gcs, dashboard, client, agent, metrics, node_manager, object_manager, env_agent = free_ports(8)
        dashboard = dashboard_port or dashboard
        ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
        command = [
            ray_cli if os.path.exists(ray_cli) else "ray", "start", "--head", "--block",
            f"--port={gcs}", "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp_dir}",
            f"--num-cpus={num_cpus:g}", f"--num-gpus={num_gpus}",
            f"--resources={json.dumps(resources)}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
            f"--metrics-export-port={metrics}", f"--node-manager-port={node_manager}",
            f"--object-manager-port={object_manager}", f"--runtime-env-agent-port={env_agent}",
            "--disable-usage-stats",
        ]
        env = dict(
            os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token_path, RAY_USAGE_STATS_ENABLED="0",
            # Ray's default (10 s) is too coarse for `servectl status` rates over a few seconds.
            RAY_metrics_report_interval_ms=str(METRICS_REPORT_INTERVAL_MS),
        )
        with open(self.log_path, "ab") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        record = ClusterRecord(
            pid=process.pid, gcs_address=f"127.0.0.1:{gcs}", temp_dir=self.temp_dir, token_path=token_path,
            dashboard_port=dashboard, num_cpus=num_cpus, num_gpus=num_gpus, started_at=time.time(), metrics_port=metrics,
        )
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if process.poll() is not None:
                raise ProviderError(f"the embedded Ray head failed to start (exit {process.returncode}); see {self.log_path}")
            if port_open("127.0.0.1", gcs) and os.path.exists(os.path.join(self.temp_dir, "session_latest", "logs", "raylet.out")):
                break
            time.sleep(0.3)
        else:
            self._stop_pid(process.pid, record.temp_dir)
            raise ProviderError(f"the embedded Ray head did not come up within {timeout_s:.0f}s; see {self.log_path}")
        tmp = self.record_path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(record), handle)
        os.replace(tmp, self.record_path)
        return record

    def stop(self) -> bool:
        """Stop the cluster this directory started. True if something was running."""
        try:
            with open(self.record_path, encoding="utf-8") as handle:
                record = ClusterRecord(**json.load(handle))
        except (FileNotFoundError, ValueError, TypeError):
            record = None
        was_running = bool(record and pid_alive(record.pid))
        if record:
            self._stop_pid(record.pid, record.temp_dir)
        self._kill_leftovers()
        try:
            os.unlink(self.record_path)
        except FileNotFoundError:
            pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return was_running

    def _stop_pid(self, pid: int, temp_dir: str) -> None:
        # Ray workers retitle themselves and take their own process groups, so
        # neither a group kill nor a command-line scan finds them all: take the
        # whole process tree under `ray start --block` before signalling anyone,
        # since children of a killed raylet are re-parented out of reach.
        targets = set(descendants(pid)) | {pid} | set(pids_mentioning(temp_dir))
        for sig, wait_s in ((signal.SIGTERM, 8.0), (signal.SIGKILL, 5.0)):
            for target in targets:
                try:
                    os.kill(target, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.time() + wait_s
            while time.time() < deadline:
                targets = {t for t in targets if pid_alive(t)} | set(pids_mentioning(temp_dir))
                if not targets:
                    return
                time.sleep(0.2)

    def _kill_leftovers(self) -> None:
        for leftover in pids_mentioning(self.temp_dir):
            try:
                os.kill(leftover, signal.SIGKILL)
            except ProcessLookupError:
                pass
