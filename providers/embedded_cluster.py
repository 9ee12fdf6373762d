"""A Ray head node that servectl starts, owns and stops for one config directory.

It runs on its own ports (free ones picked at start) and its own short temp
dir, with token auth and the dashboard on 127.0.0.1, so it never meets another
Ray on the machine. It is stopped by the process identity it recorded (never
``ray stop``, never by a PID that may have been reused).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Optional

from servectl.errors import ProviderError
from servectl.providers.processes import TAG_VARIABLE, ProcessIdentity, identify, is_running, new_tag, stop_session

RUNTIME_DIR = ".servectl"


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago (bound together, then released, so another
    process may still take one first).
    """
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
    """Whether something accepts TCP connections at ``host``:``port`` (0.5 s connect timeout)."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """Whether some live, non-zombie process has ``pid`` (whoever it is: see ``processes`` before signalling)."""
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


# What the embedded head (and so every replica) inherits from servectl's environment: what Python, pip, CUDA and
# the locale need, nothing else. Never SERVECTL_VAR_* (variables may be sensitive) nor AWS_* (credentials).
INHERITED_VARIABLES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM",
    "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
})
INHERITED_PREFIXES = ("LC_", "CONDA_", "PIP_", "UV_", "NVIDIA_", "CUDA_", "PYENV_")


def head_environment(parent: dict[str, str], token_path: str) -> dict[str, str]:
    """The environment the embedded head starts with: ``parent`` cut to what the workers need, plus Ray's settings.

    Ray gives its workers the head's environment, so whatever servectl holds
    (variables, cloud credentials) would reach every backend otherwise.
    """
    env = {
        key: value for key, value in parent.items()
        if key in INHERITED_VARIABLES or key.startswith(INHERITED_PREFIXES)
        or (key.startswith("RAY_") and not key.startswith("RAY_AUTH"))
    }
    env.update(
        RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token_path, RAY_USAGE_STATS_ENABLED="0",
        # Ray's default (10 s) is too coarse for `servectl status` rates over a few seconds.
        RAY_metrics_report_interval_ms=str(METRICS_REPORT_INTERVAL_MS),
    )
    # Ray (2.57+) starts each worker as a process-group leader and, after the worker exits, SIGKILLs the group by
    # its number. On a shared machine (pid_max 32768 wraps within minutes of churn) that number may by then lead a
    # stranger's group, which Ray kills unverified. servectl signals only what it proved its own, so the embedded
    # head turns the sweep off unless the user set it; a replica's own children still die with it (Ray's
    # kill_child_processes_on_worker_exit, from the parent, which cannot name a stranger).
    env.setdefault(PROCESS_GROUP_SWEEP, "false")
    # The embedded head is one node on this machine: its internal ports (GCS, raylet, object manager, each
    # worker's gRPC server, the dashboard agent) must take connections from this machine only. Ray turns the
    # `--node-ip-address=127.0.0.1` it is given into the machine's outside address, and then listens on every
    # interface; with Ray's single-machine mode (the one it uses on macOS and Windows) the node's address stays
    # the loopback one and its servers bind to it alone.
    env[LOCAL_ONLY] = "0"
    return env


LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


PROCESS_GROUP_SWEEP = "RAY_process_group_cleanup_enabled"


METRICS_REPORT_INTERVAL_MS = 1000


@dataclass
class ClusterRecord:
    """What ``DIR/.servectl/cluster.json`` records of the head servectl started (ports, paths, who the process is)."""

    pid: int
    gcs_address: str
    temp_dir: str  # Ray's temp dir (sessions, logs), inside private_dir
    token_path: str
    dashboard_port: int
    num_cpus: float
    num_gpus: int
    started_at: float
    metrics_port: int = 0  # Prometheus text of this node's Ray (and servectl) metrics
    identity: Optional[dict] = None  # processes.ProcessIdentity of `ray start --block`: checked before any signal
    private_dir: str = ""  # 0700, made for this head: Ray makes its temp dir world-writable, so it lives in here

    @property
    def process(self) -> Optional[ProcessIdentity]:
        """The head's recorded process identity; None when there is none or it is malformed."""
        return ProcessIdentity.from_dict(self.identity)


class EmbeddedCluster:
    """Start/find/stop the head node recorded in ``DIR/.servectl/cluster.json``.

    The head runs with a minimal environment (``head_environment``), umask
    077 and its temp dir inside a fresh 0700 directory, and is stopped by the
    identity it was recorded with (``servectl.providers.processes``).
    """

    def __init__(self, runtime_dir: str) -> None:
        self.runtime_dir = os.path.abspath(runtime_dir)
        self.record_path = os.path.join(self.runtime_dir, "cluster.json")
        self.log_path = os.path.join(self.runtime_dir, "ray-start.log")
        self.token_path = os.path.join(self.runtime_dir, "ray-token")

    @classmethod
    def for_config_dir(cls, config_dir: str) -> "EmbeddedCluster":
        """The embedded cluster of ``config_dir``, recorded in its ``.servectl`` directory."""
        return cls(os.path.join(config_dir, RUNTIME_DIR))

    def _recorded(self) -> Optional[ClusterRecord]:
        try:
            with open(self.record_path, encoding="utf-8") as handle:
                return ClusterRecord(**json.load(handle))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def record(self) -> Optional[ClusterRecord]:
        """The running cluster, or None if none was started or it has died (or the PID is now someone else's)."""
        record = self._recorded()
        if record is None:
            return None
        host, _, port = record.gcs_address.rpartition(":")
        if is_running(record.process) and port_open(host, int(port)):
            return record
        return None

    def start(
        self, num_cpus: float, num_gpus: int, resources: dict[str, float], timeout_s: float = 90,
        dashboard_port: Optional[int] = None, extra_env: Optional[dict[str, str]] = None,
    ) -> ClusterRecord:
        """Start the head (or return the one running): free ports, token auth, minimal environment, private temp dir.

        ``extra_env`` is given to the head (and its workers) on top of the
        minimal environment: what a node has by other means elsewhere (an
        instance role's credentials, for a test that plays an AWS node).
        Raises ProviderError when it exits or does not come up within ``timeout_s`` seconds.
        """
        existing = self.record()
        if existing:
            return existing
        self._stop_recorded()  # a head that died leaves workers in its session: they go first
        os.makedirs(self.runtime_dir, mode=0o700, exist_ok=True)
        if not os.path.exists(self.token_path):
            fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
        # Ray's unix socket paths must stay under 108 bytes: a short private dir under /tmp.
        private_dir = tempfile.mkdtemp(prefix="servectl-", dir="/tmp")
        temp_dir = os.path.join(private_dir, "ray")
        gcs, dashboard, client, agent, metrics, node_manager, object_manager, env_agent = free_ports(8)
        dashboard = dashboard_port or dashboard
        ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
        command = [
            ray_cli if os.path.exists(ray_cli) else "ray", "start", "--head", "--block",
            f"--port={gcs}", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}",
            f"--num-cpus={num_cpus:g}", f"--num-gpus={num_gpus}",
            f"--resources={json.dumps(resources)}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
            # No log monitor: it streams workers' logs to drivers, and servectl's drivers take none (log_to_driver=False).
            f"--ray-client-server-port={client}", "--include-log-monitor=False", f"--dashboard-agent-listen-port={agent}",
            f"--metrics-export-port={metrics}", f"--node-manager-port={node_manager}",
            f"--object-manager-port={object_manager}", f"--runtime-env-agent-port={env_agent}",
            "--disable-usage-stats",
        ]
        tag = new_tag()
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**head_environment(dict(os.environ), self.token_path), **(extra_env or {}), TAG_VARIABLE: tag},
                start_new_session=True, umask=0o077,
            )
        identity = identify(process.pid, tag)
        record = ClusterRecord(
            pid=process.pid, gcs_address=f"127.0.0.1:{gcs}", temp_dir=temp_dir, token_path=self.token_path,
            dashboard_port=dashboard, num_cpus=num_cpus, num_gpus=num_gpus, started_at=time.time(), metrics_port=metrics,
            identity=identity.to_dict() if identity else None, private_dir=private_dir,
        )
        self._write(record)  # before waiting: an apply killed meanwhile leaves a head the next one can stop
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if process.poll() is not None:
                self._stop(record)
                raise ProviderError(f"the embedded Ray head failed to start (exit {process.returncode}); see {self.log_path}")
            if port_open("127.0.0.1", gcs) and os.path.exists(os.path.join(temp_dir, "session_latest", "logs", "raylet.out")):
                break
            time.sleep(0.3)
        else:
            self._stop(record)
            raise ProviderError(f"the embedded Ray head did not come up within {timeout_s:.0f}s; see {self.log_path}")
        return record

    def _write(self, record: ClusterRecord) -> None:
        tmp = self.record_path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(record), handle)
        os.replace(tmp, self.record_path)

    def stop(self) -> bool:
        """Stop the cluster this directory started. True if something was running."""
        record = self._recorded()
        was_running = bool(record and is_running(record.process))
        self._stop_recorded()
        return was_running

    def _stop_recorded(self) -> None:
        record = self._recorded()
        if record is not None:
            self._stop(record)
        try:
            os.unlink(self.record_path)
        except FileNotFoundError:
            pass

    def _stop(self, record: ClusterRecord) -> None:
        # Ray workers retitle themselves and take process groups of their own,
        # but keep the session `ray start --block` leads: the session is the cluster.
        leader = record.process
        if leader is not None:
            stop_session(leader, grace_s=8.0, kill_s=5.0)
        if record.private_dir and os.path.basename(record.private_dir).startswith("servectl-"):
            shutil.rmtree(record.private_dir, ignore_errors=True)
