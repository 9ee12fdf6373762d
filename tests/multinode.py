"""A real multi-node Ray cluster on one machine: one network namespace per node, a bridge, Debian's haproxy in front.

Each node gets its own network stack (``ip netns``), joined to a private
bridge by a veth pair, with addresses only inside 10.200.N.0/24 and no route
out. Ray's ports are therefore the defaults inside every namespace and never
meet another Ray on the machine. Every process is stopped by PID: those of a
namespace are exactly ``ip netns pids NS``. Teardown removes the namespaces
and the bridge even when the test failed.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

RAY_PORT = 6379
DASHBOARD_PORT = 8265
PROXY_PORT = 8000  # servectl's front proxy on every node (the load balancer's target)
SERVE_PORT = 8001  # Serve's own proxy behind it


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def missing_tools() -> list[str]:
    return [tool for tool in ("ip", "haproxy") if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}")]


def _free_subnet() -> int:
    used = sh("ip", "-o", "-4", "addr").stdout
    for n in range(10, 250):
        if f"10.200.{n}." not in used:
            return n
    raise RuntimeError("no free 10.200.N.0/24 subnet for the test network")


@dataclass
class Node:
    name: str
    namespace: str
    ip: str
    veth_host: str


@dataclass
class MultiNodeCluster:
    """Bridge + namespaces + Ray nodes + haproxy; ``close()`` undoes all of it."""

    workdir: Path
    subnet: int = field(default_factory=_free_subnet)
    nodes: dict[str, Node] = field(default_factory=dict)
    haproxy: Optional[subprocess.Popen] = None
    lb_port: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. the AWS endpoint the nodes use
    moto: Optional[subprocess.Popen] = None

    def __post_init__(self) -> None:
        self.prefix = f"sc{self.subnet}"
        self.bridge = f"{self.prefix}br"
        self.token_path = str(self.workdir / "ray-token")
        self.temp_dir = f"/tmp/sc{self.subnet}-{os.getpid()}"  # Ray's socket paths must stay short
        with open(os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            handle.write(secrets.token_hex(32))

    @property
    def token(self) -> str:
        return Path(self.token_path).read_text().strip()

    def use_token(self, token: str) -> None:
        """Boot the nodes with this token (the one servectl generated and put in the nodes' user data)."""
        Path(self.token_path).write_text(token)

    def ip(self, index: int) -> str:
        return f"10.200.{self.subnet}.{index}"

    @property
    def head_ip(self) -> str:
        return self.nodes["head"].ip

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.head_ip}:{DASHBOARD_PORT}"

    # -- network ------------------------------------------------------------------------------------------------

    def create_network(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.ip(1)}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")

    def add_namespace(self, name: str, index: int) -> Node:
        namespace = f"{self.prefix}-{name}"
        host_end, ns_end = f"{self.prefix}h{index}", f"{self.prefix}n{index}"
        sh("ip", "netns", "add", namespace)
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        sh("ip", "link", "set", ns_end, "netns", namespace)
        sh("ip", "link", "set", host_end, "master", self.bridge)
        sh("ip", "link", "set", host_end, "up")
        sh("ip", "netns", "exec", namespace, "ip", "addr", "add", f"{self.ip(index)}/24", "dev", ns_end)
        sh("ip", "netns", "exec", namespace, "ip", "link", "set", ns_end, "up")
        sh("ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up")
        node = Node(name=name, namespace=namespace, ip=self.ip(index), veth_host=host_end)
        self.nodes[name] = node
        return node

    # -- Ray ----------------------------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        return dict(
            os.environ, **self.extra_env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=self.token_path, RAY_USAGE_STATS_ENABLED="0",
            # These nodes share the suite's PID space: Ray's group sweep by number could kill a test's process.
            RAY_process_group_cleanup_enabled="false",
            # Notice a dead node in ~2 s instead of Ray's default ~15 s.
            RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="2",
            RAY_health_check_timeout_ms="1000",
        )

    def start_ray(self, name: str, head: bool = False, num_cpus: int = 1) -> None:
        node = self.nodes[name]
        ray = os.path.join(os.path.dirname(sys.executable), "ray")
        command = [ray, "start", f"--node-ip-address={node.ip}", f"--num-cpus={num_cpus}", "--disable-usage-stats"]
        if head:
            command += ["--head", f"--port={RAY_PORT}", f"--temp-dir={self.temp_dir}",
                        "--dashboard-host=0.0.0.0", f"--dashboard-port={DASHBOARD_PORT}"]
        else:
            # A node's own temp dir, as on its own disk: sharing the head's, two nodes unpacked one code package
            # into one directory and a replica found it half gone ("working_dir ... does not exist").
            command += [f"--address={self.head_ip}:{RAY_PORT}", f"--temp-dir={self.temp_dir}-{name}"]
        with open(self.workdir / f"ray-{name}.log", "ab") as log:
            started = subprocess.run(["ip", "netns", "exec", node.namespace, *command], env=self._env(),
                                     stdout=log, stderr=subprocess.STDOUT, timeout=120)
        if started.returncode != 0:
            raise RuntimeError(f"ray start on {name} failed; see {self.workdir / f'ray-{name}.log'}")

    def start_moto(self, port: int) -> str:
        """moto_server on the bridge's host address: reachable from every node, from nothing outside."""
        log = open(self.workdir / "moto.log", "ab")
        self.moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", self.ip(1), "-p", str(port)],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://{self.ip(1)}:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                return url
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"moto_server did not start on {url}")

    def start_agent(self, name: str, agent_args: list[str]) -> None:
        """servectl's node agent in the node's namespace, as the node's user data starts it."""
        node = self.nodes[name]
        command = [sys.executable, "-m", "servectl.node_agent", *agent_args, "--node-ip", node.ip,
                   "--listen", f"{node.ip}:{PROXY_PORT}", "--runtime-dir", str(self.workdir / f"agent-{name}"),
                   "--token-path", self.token_path, "--interval", "0.5"]
        if name == "head":
            command += ["--ray-address", f"{node.ip}:{RAY_PORT}"]
        log = open(self.workdir / f"agent-{name}.log", "ab")
        subprocess.Popen(["ip", "netns", "exec", node.namespace, *command], env=self._env(), stdout=log,
                         stderr=subprocess.STDOUT, start_new_session=True)

    def pids(self, name: str) -> list[int]:
        listed = sh("ip", "netns", "pids", self.nodes[name].namespace, check=False).stdout.split()
        return [int(pid) for pid in listed]

    def kill_node(self, name: str) -> int:
        """SIGKILL every process of one node (its namespace's PIDs): a node dying, not shutting down.

        All are frozen (SIGSTOP) before any dies, as a machine dies all at once: killed one
        by one, a replica could die while its node's proxy still ran and answered for it.
        """
        pids = self.pids(name)
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        while self.pids(name) and time.monotonic() < deadline:
            time.sleep(0.1)
        return len(pids)

    # -- the load balancer --------------------------------------------------------------------------------------

    def start_haproxy(self, lb_port: int) -> None:
        servers = "\n".join(f"    server {n.name} {n.ip}:{PROXY_PORT} check" for n in self.nodes.values())
        # An ALB whose targets all fail their health check routes to all of them ("fails open"); HAProxy's
        # unchecked backup servers, used together only when every checked one is down, do the same here.
        fail_open = "\n".join(f"    server {n.name}-open {n.ip}:{PROXY_PORT} backup" for n in self.nodes.values())
        config = self.workdir / "haproxy.cfg"
        config.write_text(f"""global
    maxconn 2000
    # One line per request in haproxy.log: its termination state says which side failed one.
    log stdout format raw local0
defaults
    mode http
    log global
    option httplog
    timeout connect 500ms
    timeout client 30s
    timeout server 30s
    # A live node slowed by the others' recovery (2 cores here) must not look dead: a dead one refuses at once.
    timeout check 2s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response junk-response response-timeout 502 503 504
frontend lb
    bind 127.0.0.1:{lb_port}
    default_backend serve_proxies
backend serve_proxies
    balance roundrobin
    option allbackups
    option httpchk GET /-/healthz
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2
{servers}
{fail_open}
""")
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        log = open(self.workdir / "haproxy.log", "ab")
        self.haproxy = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
        self.lb_port = lb_port

    def lb_server_changes(self) -> list[str]:
        """The load balancer's health verdicts so far ("Server serve_proxies/w2 is DOWN, reason: …"), in order."""
        try:
            lines = (self.workdir / "haproxy.log").read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [line[:160] for line in lines if line.startswith("Server ")]

    @property
    def lb_url(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}"

    def healthz(self, name: str, timeout: float = 1.0) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.nodes[name].ip}:{PROXY_PORT}/-/healthz", timeout=timeout) as answer:
                return answer.status == 200
        except OSError:
            return False

    # -- teardown -----------------------------------------------------------------------------------------------

    def close(self) -> None:
        if self.haproxy is not None and self.haproxy.poll() is None:
            self.haproxy.kill()
            self.haproxy.wait()
        for name in list(self.nodes):
            self.kill_node(name)
        if self.moto is not None and self.moto.poll() is None:
            self.moto.kill()
            self.moto.wait()
        for node in self.nodes.values():
            sh("ip", "netns", "del", node.namespace, check=False)
        sh("ip", "link", "del", self.bridge, check=False)
        for directory in (self.temp_dir, *(f"{self.temp_dir}-{name}" for name in self.nodes)):
            shutil.rmtree(directory, ignore_errors=True)
