"""The replica watcher: keeps the front proxy's replica sections on the replicas Serve runs now (``ingress="direct"``).

``apply`` renders the front proxy from the replicas Serve lists at that moment; between applies Serve starts and
stops replicas on its own (autoscaling, a crashed replica replaced). The watcher — a program HAProxy's master runs
beside its workers, so it lives and dies with the front proxy — polls Serve's target groups through the dashboard
every second and, when the running replicas differ from the ones the front proxy holds, renders the same
configuration with the new ones and reloads it. Ray Serve's own HAProxy mode does the same from its controller
(a long poll on the target groups); a load balancer's target group registration is the AWS analogue.

What the configuration is made of is the routing file apply writes (``routing.json`` in the runtime dir, 0600);
apply and the watcher render under one lock, so the last one to render holds the freshest of both.

    python -m servectl.providers.replica_watch RUNTIME_DIR
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Optional

from servectl.errors import ProviderError
from servectl.providers.dashboard import RayDashboard
from servectl.providers.front_proxy import FrontProxy, Targets, drain_bound_s, render_config, routed_endpoints
from servectl.runtime.proof import route_proof

ROUTING_FILE = "routing.json"
LOCK_FILE = "render.lock"
POLL_S = 1.0  # how often Serve's replicas are read while they change: a replica is live for the front proxy within about this
# Each poll reads Serve's whole state through the dashboard (the controller builds it for every request): about
# 1.5 % of a core per front proxy on the 2-core machine at one a second (measured in session 11). Replicas change
# around a reload — apply's or the watcher's own, and each reload starts a fresh watcher — so a watcher polls
# every POLL_S for QUIET_S after it starts, then every IDLE_POLL_S: a replica Serve starts on its own later
# (autoscaling, a crashed one replaced) is reached within that; one that dies is out at once anyway (its health
# check, every second).
QUIET_S = 30.0
IDLE_POLL_S = 5.0
LOCK_TIMEOUT_S = 60.0


@dataclass
class Routing:
    """What the front proxy's configuration is made of, as apply last wrote it.

    ``policies`` are the endpoints' routing policies (as the policy store holds them), ``targets`` the replicas
    the configuration now holds (backend -> [(address, port)]), ``local_addresses`` this machine's addresses as
    Ray names nodes (None: every replica is on this machine, the embedded head), ``watcher`` the command HAProxy's
    master runs to keep it live.
    """

    bind_host: str
    bind_port: int
    serve_port: int
    policies: dict[str, dict[str, Any]]
    token_path: str
    dashboard_url: str
    local_addresses: Optional[list[str]]
    watcher: list[str]
    targets: Targets = field(default_factory=dict)

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> "Routing":
        """The routing ``to_dict``-shaped ``body`` holds; KeyError or TypeError when it is not that shape."""
        routing = cls(**body)
        routing.targets = {backend: [(str(a), int(p)) for a, p in replicas] for backend, replicas in routing.targets.items()}
        return routing

    def to_dict(self) -> dict[str, Any]:
        """The routing as JSON-ready data."""
        return asdict(self)


def watcher_command(runtime_dir: str) -> list[str]:
    """The command line HAProxy's master runs: this Python, this module, the runtime dir (absolute)."""
    # runpy warns that the package imported this module before running it: true, and harmless.
    return [sys.executable, "-W", "ignore::RuntimeWarning:runpy", "-m", "servectl.providers.replica_watch",
            os.path.abspath(runtime_dir)]


def read_routing(runtime_dir: str) -> Optional[Routing]:
    """The routing apply last wrote; None when there is none (yet) or it cannot be read."""
    try:
        with open(os.path.join(runtime_dir, ROUTING_FILE), encoding="utf-8") as handle:
            return Routing.from_dict(json.load(handle))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_routing(runtime_dir: str, routing: Routing) -> None:
    """Write ``routing`` atomically, 0600 (its policies are the deployment's; no secret, but nobody else's)."""
    path = os.path.join(runtime_dir, ROUTING_FILE)
    tmp = path + ".tmp"
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as handle:
        json.dump(routing.to_dict(), handle)
    os.replace(tmp, path)


@contextlib.contextmanager
def render_lock(runtime_dir: str, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the runtime dir's render lock (``flock``): one renderer at a time. ProviderError after ``timeout_s``."""
    os.makedirs(runtime_dir, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(runtime_dir, LOCK_FILE), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ProviderError(f"the front proxy's render lock in {runtime_dir} was held over {timeout_s:g} s")
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def reachable_targets(listed: Targets, local_addresses: Optional[list[str]]) -> Targets:
    """The replicas the front proxy reaches, at 127.0.0.1 (Serve's HTTP host: replicas listen on loopback): every
    backend's when ``local_addresses`` is None (the embedded head), else only backends whose every replica runs on
    this machine — a backend with one elsewhere is left to Serve's proxy, which reaches them all."""
    reachable: Targets = {}
    for backend, replicas in listed.items():
        if local_addresses is None or all(address in local_addresses for address, _ in replicas):
            reachable[backend] = sorted({("127.0.0.1", port) for _, port in replicas})
    return reachable


def render(routing: Routing, targets: Targets, proxy: FrontProxy) -> str:
    """The front proxy's configuration for ``routing`` with ``targets``; ValueError on a value that breaks a rule."""
    with open(routing.token_path, encoding="utf-8") as handle:
        proof = route_proof(handle.read().strip())
    return render_config(
        routing.bind_host, routing.bind_port, routing.serve_port, routed_endpoints(routing.policies), proxy.pidfile,
        proof, targets, routing.watcher, proxy.mirror_path,
    )


def listed_targets(routing: Routing) -> Targets:
    """Serve's running replicas by backend, read through the dashboard; ProviderError when it cannot be read."""
    with open(routing.token_path, encoding="utf-8") as handle:
        token = handle.read().strip()
    return RayDashboard(routing.dashboard_url, token or None).replica_targets()


def refresh(runtime_dir: str, proxy: FrontProxy) -> bool:
    """One poll: when Serve's replicas differ from the ones the front proxy holds, render and reload. Returns
    whether it reloaded; ProviderError when Serve cannot be read or the proxy refuses the configuration."""
    routing = read_routing(runtime_dir)
    if routing is None:
        return False
    targets = reachable_targets(listed_targets(routing), routing.local_addresses)
    if targets == routing.targets:
        return False
    # The reload below makes HAProxy's master stop this watcher (SIGUSR1) and start a new one: held off until the
    # routing records what the configuration now holds, then it ends this process.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        return _render_targets(runtime_dir, proxy, targets)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})


def _render_targets(runtime_dir: str, proxy: FrontProxy, targets: Targets) -> bool:
    with render_lock(runtime_dir):
        routing = read_routing(runtime_dir)  # apply may have rendered meanwhile: read both again
        if routing is None or proxy.master_pid() is None:
            return False
        targets = reachable_targets(listed_targets(routing), routing.local_addresses)
        if targets == routing.targets:
            return False
        config = render(routing, targets, proxy)
        proxy.apply(config, routing.bind_host, routing.bind_port, drain_bound_s(routed_endpoints(routing.policies)),
                    wait=False)
        routing.targets = targets
        write_routing(runtime_dir, routing)
    print(f"replica-watch: the front proxy now reaches {targets}", flush=True)  # HAProxy's log
    return True


def main(argv: list[str]) -> int:
    """Poll while the front proxy of ``argv[0]`` (a runtime dir) runs — every POLL_S seconds for QUIET_S seconds,
    then every IDLE_POLL_S; a failed poll is reported on stderr (HAProxy's log) and the next one tries again."""
    runtime_dir = os.path.abspath(argv[0])
    proxy = FrontProxy(runtime_dir)
    started = time.monotonic()
    while True:
        time.sleep(POLL_S if time.monotonic() - started < QUIET_S else IDLE_POLL_S)
        if proxy.master_pid() is None:
            return 0  # the front proxy that runs this watcher is gone (stopped, or killed without stopping us)
        try:
            refresh(runtime_dir, proxy)
        except (ProviderError, ValueError, OSError) as err:
            print(f"replica-watch: {type(err).__name__}: {err}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
