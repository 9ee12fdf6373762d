"""The local Ray provider: backends as Ray Serve applications on an embedded or given cluster.

Each backend is one Serve application (same name), built on the workers by
``servectl.runtime.application:build``. The whole set is sent declaratively
(Serve's own config schema, as ``serve deploy`` sends it), so a Serve PUT that
replaces every application always carries every application servectl keeps;
application names never change, so a live route is never renamed away.
"""
from __future__ import annotations

import hashlib
import json
import math
import logging
import os
import signal
import tempfile
import threading
import time
from typing import Any, Optional

from servectl.loading import bundle
from servectl.providers.base import ClusterView, LiveView, Progress, Provider
from servectl.model.desired import ProviderSpec
from servectl.errors import ProviderError
from servectl.model.capacity import NodeCapacity
from servectl.runtime.proof import route_proof
from servectl.runtime.sealed import SealError, key_from_token
from servectl.model.kinds import BACKEND, ENDPOINT
from servectl.model.plan import Action, ResourceChange
from servectl.state.document import ResourceState

from servectl.providers import serve_health
from servectl.providers.dashboard import RayDashboard
from servectl.providers import serve_apps
from servectl.providers.serve_apps import PROXY_LOCATIONS
from servectl.providers.serve_deploy import HandleDrain, deploy_serve
from servectl.providers.embedded_cluster import RUNTIME_DIR, EmbeddedCluster, free_ports, port_open
from servectl.providers.front_proxy import (
    DEFAULT_DRAIN_S, FrontProxy, Kept, drain_bound_s, render_config, routed_endpoints,
)
from servectl.providers.replica_watch import (
    Routing, reachable_targets, read_routing, render, render_lock, watcher_command, write_routing,
)
from servectl.routing.policy import applied_endpoints, read_policies, write_policies

_connected: dict[str, Optional[str]] = {"address": None}

# What the embedded head is started with for ingress="direct": each replica takes HTTP on its own port (Serve's
# direct ingress). A replica that starts draining answers 503 on /-/healthz at once and keeps its port open this
# long: the front proxy's check (every second, down after one failure) takes it out first, and a connection that
# still finds it closed is retried on another replica. Serve's default, 30 s, is for a load balancer that checks
# every 10 s; it would add 30 s to every replica's stop.
DIRECT_INGRESS_ENV = {
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "3",
}


def connect(address: str, token_path: Optional[str]) -> None:
    """Connect this process to the cluster at ``address`` as a Ray driver (once per address)."""
    import ray

    if _connected["address"] == address and ray.is_initialized():
        return
    host, _, port = address.rpartition(":")
    if not port_open(host, int(port)):
        raise ProviderError(f"cannot reach the Ray cluster at {address}: nothing listens there (is it running?)")
    if ray.is_initialized():
        ray.shutdown()
    if token_path:
        _use_token(token_path)
    if host in ("127.0.0.1", "localhost", "::1"):
        _keep_loopback()
    for name in ("ray", "ray.serve"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # A Ray driver installs its own SIGTERM handler (exit 15, a native stack dump): keep the caller's.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False, configure_logging=False)
    except Exception as err:  # noqa: BLE001 - Ray raises many kinds; the user needs one line
        raise ProviderError(f"cannot connect to the Ray cluster at {address}: {type(err).__name__}: {err}") from None
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)
    _connected["address"] = address


def _keep_loopback() -> None:
    """Reach a cluster at a loopback address there, as Ray's single-machine mode does.

    Ray replaces a loopback address it is given with this machine's outside one before it connects; the embedded
    head listens on the loopback address only (``embedded_cluster.LOCAL_ONLY``), so the driver must keep it.
    Ray reads the setting when it resolves the address, so this process's copy is set, not the environment
    (the environment would reach every process started from here, and a Ray node started with it refuses to join
    a cluster). A cluster listening on every interface is reached at the loopback address all the same.
    """
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def _use_token(token_path: str) -> None:
    """Point this process's Ray client at ``token_path``.

    Ray caches its auth mode and token on first use, so changing the
    environment alone is not enough once Ray has been imported.
    """
    from ray._raylet import AuthenticationTokenLoader, Config

    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = token_path
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def live_nodes() -> list[NodeCapacity]:
    """The connected cluster's alive nodes for placement (after ``connect``): name ``<ip>/<node id prefix>``, CPUs,
    GPUs, memory in bytes and custom resources (Ray's ``node:``/``accelerator_type:`` markers left out).
    """
    import ray

    nodes = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        res = dict(node.get("Resources") or {})
        custom = {
            key: amount
            for key, amount in res.items()
            if key not in ("CPU", "GPU", "memory", "object_store_memory")
            and not key.startswith(("node:", "accelerator_type:"))
        }
        nodes.append(
            NodeCapacity(
                name=str(node.get("NodeManagerAddress", "?")) + "/" + node["NodeID"][:8],
                cpus=float(res.get("CPU", 0)),
                gpus=int(res.get("GPU", 0)),
                memory=res.get("memory"),
                resources=custom,
            )
        )
    return nodes


class LocalRayProvider(Provider):
    """The ``LocalRay`` provider: Serve on the Ray cluster at ``spec.address``, or on a head servectl embeds for the
    config directory when none is given, with servectl's front proxy (HAProxy) in front of Serve's HTTP proxy.
    """

    def __init__(self, spec: ProviderSpec, config_dir: str, code_dir: Optional[str] = None) -> None:
        self.spec = spec
        self.config_dir = config_dir
        self.code_dir = code_dir or config_dir
        self.embedded = EmbeddedCluster.for_config_dir(config_dir) if spec.address is None else None
        self.front_proxy = FrontProxy(os.path.join(config_dir, RUNTIME_DIR))
        self._package_uri: Optional[str] = None
        self._packages_present: dict[str, bool] = {}
        self._serve_port: Optional[int] = None
        self._handles = HandleDrain()
        self._rest: Optional[RayDashboard] = None

    # --- where the cluster is -------------------------------------------------
    def _target(self) -> Optional[tuple[str, Optional[str]]]:
        if self.embedded is None:
            return self.spec.address, self.spec.auth_token_path  # type: ignore[return-value]
        record = self.embedded.record()
        return (record.gcs_address, record.token_path) if record else None

    def _token_path(self) -> Optional[str]:
        if self.embedded is None:
            return self.spec.auth_token_path
        record = self.embedded.record()
        return record.token_path if record else self.embedded.token_path

    def sealing_problem(self) -> Optional[str]:
        """Why values cannot be sealed: a given cluster lacks a token file. None otherwise (always when embedded)."""
        if self._token_path() is None:
            return (
                f"the Ray cluster at {self.spec.address} is given without a token (LocalRay(auth_token_path=…) or "
                "SERVECTL_RAY_AUTH_TOKEN_PATH): sensitive values are sealed with a key from the cluster's token, so "
                "without token auth they cannot be kept out of Ray's logs; give the token file"
            )
        return None

    def _token(self) -> Optional[str]:
        path = self._token_path()
        if path is None:
            return None
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError as err:
            raise ProviderError(f"cannot read the cluster's token {path}: {err}") from None

    def _route_proof(self) -> str:
        """What the front proxy shows replicas that an endpoint routed a request (none without token auth)."""
        token = self._token()
        return route_proof(token) if token else ""

    def sealing_key(self) -> bytes:
        """The key derived from the cluster's token file. Raises ProviderError when there is no token file, it cannot be
        read, or no key can be derived from its token.
        """
        problem = self.sealing_problem()
        if problem:
            raise ProviderError(problem)
        try:
            return key_from_token(self._token() or "")
        except SealError as err:
            raise ProviderError(f"cannot seal sensitive values: {err}") from None

    def _projected_nodes(self) -> list[NodeCapacity]:
        cpus = self.spec.num_cpus if self.spec.num_cpus is not None else float(os.cpu_count() or 1)
        return [NodeCapacity(name="embedded-head", cpus=cpus, gpus=self.spec.num_gpus, resources=dict(self.spec.resources))]

    def environment_problems(self, backends: dict[str, dict[str, Any]]) -> dict[str, str]:
        """Check the backends that need a conda env, or import code only the workers have (no pip or conda of theirs).

        Runs as a Ray task on the cluster, or in this Python before the embedded head exists (it will run the head).
        Returns backend name -> why it cannot start, for those with a problem. Raises ProviderError when the check
        cannot run.
        """
        checks = {}
        for name, attrs in backends.items():
            code = attrs.get("code") or {}
            worker_only = code.get("origin") == "workers" and not attrs.get("pip") and not attrs.get("conda")
            module = str(code.get("import_path", "")).partition(":")[0] if worker_only else None
            if module or attrs.get("conda"):
                checks[name] = {"conda": attrs.get("conda"), "module": module}
        if not checks:
            return {}
        from servectl.runtime import probe

        target = self._target()
        if target is None:  # the embedded head will run this machine's Python
            return probe.environment_problems(checks)
        connect(*target)
        import ray

        task = ray.remote(num_cpus=0)(probe.environment_problems)
        try:
            return ray.get(task.remote(checks), timeout=120)
        except Exception as err:  # noqa: BLE001 - the cluster's failure, in one line
            raise ProviderError(f"cannot check the workers' environment: {type(err).__name__}: {err}") from None

    def cluster(self) -> ClusterView:
        """The live nodes when the cluster runs (connecting as a driver); else the embedded head as it will start
        ("projected": ``num_cpus`` or this machine's CPU count, ``num_gpus``, ``resources``).
        """
        target = self._target()
        if target is None:
            return ClusterView(nodes=self._projected_nodes(), source="projected")
        connect(*target)
        return ClusterView(nodes=live_nodes(), source="live")

    def prepare(self, progress: Progress) -> dict[str, Any]:
        """Start the embedded head if it is not running, connect, and start Serve on an internal port (or adopt it).

        Returns ``address``, ``embedded``, ``serve_port`` and the alive ``nodes`` count, for the state. Raises
        ProviderError when the head does not start or the cluster or its dashboard cannot be reached.
        """
        if self.embedded is not None and self.embedded.record() is None:
            progress("starting the embedded Ray head …")
            cpus = self.spec.num_cpus if self.spec.num_cpus is not None else float(os.cpu_count() or 1)
            record = self.embedded.start(
                cpus, self.spec.num_gpus, self.spec.resources,
                extra_env=DIRECT_INGRESS_ENV if self.spec.ingress == "direct" else None,
            )
            progress(f"embedded Ray head running at {record.gcs_address} (temp dir {record.temp_dir})")
        target = self._target()
        assert target is not None
        connect(*target)
        self._start_serve()
        import ray

        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        return {"address": target[0], "embedded": self.embedded is not None, "serve_port": self._serve_port, "nodes": nodes}

    def _dashboard(self) -> RayDashboard:
        """Serve is read and deployed through Ray's dashboard REST API: no Serve import in the CLI.

        The driver connection stays for what only a member can do (nodes, the
        policy store, code uploads); the dashboard's address comes from it.
        """
        if self._rest is None:
            target = self._target()
            assert target is not None
            connect(*target)
            from ray._private.services import get_webui_url_from_internal_kv

            url = get_webui_url_from_internal_kv()
            if not url:
                raise ProviderError(
                    f"the Ray cluster at {target[0]} runs no dashboard; servectl deploys Serve through it "
                    "(start Ray with the dashboard on)"
                )
            token = None
            if target[1]:
                with open(target[1], encoding="utf-8") as handle:
                    token = handle.read().strip()
            self._rest = RayDashboard(url if "://" in url else f"http://{url}", token)
        return self._rest

    def _start_serve(self) -> None:
        """Start Serve on an internal port (or adopt the one it has): the front proxy owns the public one."""
        dashboard = self._dashboard()
        details = dashboard.serve_details()
        if details.get("controller_info"):
            wanted = PROXY_LOCATIONS[self.spec.http_location]
            live_location = str(details.get("proxy_location"))
            if live_location == wanted or serve_apps.standing(details):
                # With applications deployed the planner already refuses a location change.
                self._serve_port = int((details.get("http_options") or {})["port"])
                return
            # An empty Serve left with another HTTP location (an earlier destroy):
            # Serve fixes its proxies at start, so start it again.
            dashboard.shutdown_serve()
        (port,) = free_ports(1)
        dashboard.deploy({
            "proxy_location": PROXY_LOCATIONS[self.spec.http_location],
            "http_options": {"host": "127.0.0.1", "port": port},
            "applications": [],
        })
        self._serve_port = port
        live = str(dashboard.serve_details().get("proxy_location"))
        if live != PROXY_LOCATIONS[self.spec.http_location]:
            # Serve's direct ingress (RAY_SERVE_ENABLE_DIRECT_INGRESS=1 on the cluster) serves HTTP from the head
            # only, whatever location it is given.
            raise ProviderError(
                f"http_location={self.spec.http_location!r} cannot hold on this cluster: Serve runs its proxy "
                f"{live!r} (a cluster started with Serve's direct ingress serves HTTP from the head only); use "
                "http_location='HeadOnly', or a cluster started without RAY_SERVE_ENABLE_DIRECT_INGRESS"
            )

    # --- reading the live system ----------------------------------------------
    def _details(self) -> dict[str, Any]:
        return self._dashboard().serve_details()

    def unmanaged_conflicts(self, managed: set[str]) -> list[str]:
        """Serve applications the state does not record, less those being deleted (``serve_apps.strangers``).
        Called after prepare(): the cluster is connected and Serve is running."""
        return serve_apps.strangers(self._details(), managed)

    def _live_details(self, target: tuple[str, Optional[str]]) -> dict[str, Any]:
        """Serve's details on ``target`` without starting anything (no applications when Serve is not running)."""
        connect(*target)
        try:
            return self._dashboard().serve_details()
        except ProviderError as err:
            raise ProviderError(f"cannot read Serve's state from {target[0]}: {err}") from None

    def observe(self) -> LiveView:
        """Serve's backends, the endpoints' policies from the cluster's policy store, every alive node's metrics URL and
        the node count. Raises ProviderError when the embedded head is not running or Serve's state cannot be read.
        """
        target = self._target()
        if target is None:
            raise ProviderError(
                "the embedded Ray cluster of this config is not running: nothing is applied here (run `servectl apply`)"
            )
        details = self._live_details(target)
        import ray

        backends = serve_health.live_backends(details, self.sealing_key() if self.sealing_problem() is None else None)
        alive = [node for node in ray.nodes() if node.get("Alive")]
        urls = [
            f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
            for node in alive
            if node.get("MetricsExportPort")
        ]
        return LiveView(backends=backends, metrics_urls=urls, endpoints=read_policies(), nodes=len(alive))

    def fingerprint(self) -> Optional[str]:
        """A SHA-256 hex digest of Serve's deployed application configs, the alive nodes' resources and the front
        proxy's policy (``_proxy_policy``); None when the embedded head is not running. Raises ProviderError when Serve
        cannot be read.
        """
        target = self._target()
        if target is None:
            return None
        details = self._live_details(target)
        import ray

        apps = {
            name: app.get("deployed_app_config")
            for name, app in sorted((details.get("applications") or {}).items())
        }
        nodes = sorted(
            json.dumps(node.get("Resources") or {}, sort_keys=True) for node in ray.nodes() if node.get("Alive")
        )
        body = json.dumps({"apps": apps, "nodes": nodes, "front_proxy": self._proxy_policy()}, sort_keys=True, default=str)
        return hashlib.sha256(body.encode()).hexdigest()

    def _proxy_policy(self) -> str:
        """What servectl told the front proxy: on the direct path the routing apply wrote, less the replicas it
        held (Serve replaces and scales replicas on its own and the replica watcher follows; a saved plan must not
        go stale because a replica moved, as the AWS fingerprint reads only the routing document's version); on
        the python path the configuration itself (it names no replica). "" when there is neither."""
        if self.spec.ingress == "direct":
            routing = read_routing(self.front_proxy.runtime_dir)
            if routing is not None:
                return json.dumps({**routing.to_dict(), "targets": None}, sort_keys=True)
        if os.path.exists(self.front_proxy.config_path):
            with open(self.front_proxy.config_path, encoding="utf-8") as handle:
                return handle.read()
        return ""

    # --- changing it -----------------------------------------------------------
    def _upload(self) -> str:
        if self._package_uri is None:
            from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

            quiet = logging.getLogger("servectl.upload")
            quiet.setLevel(logging.ERROR)
            try:
                with tempfile.TemporaryDirectory(prefix="servectl-upload-") as scratch:
                    # Exactly the bundle's files (what history and saved plans keep), never a second listing.
                    shipped = bundle.thaw(bundle.freeze(self.code_dir), os.path.join(scratch, "code"))
                    env = upload_working_dir_if_needed(
                        {"working_dir": shipped}, include_gitignore=False, scratch_dir=scratch, logger=quiet,
                    )
            except Exception as err:  # noqa: BLE001 - Ray wraps OS and size errors alike
                raise ProviderError(f"cannot upload {self.code_dir} to the cluster: {err}") from None
            self._package_uri = env["working_dir"]
        return self._package_uri

    def _package_for(self, resource: ResourceState, change: ResourceChange) -> str:
        """Keep a backend on the code package it runs unless this change restarts it anyway.

        A new upload has a new URI, and Serve restarts replicas whose runtime
        environment changes: reusing the recorded URI keeps untouched backends running.
        """
        from ray._private.runtime_env.packaging import package_exists

        recorded = resource.live.get("package_uri")
        restarting = change.address == resource.address and change.action in (Action.CREATE, Action.REPLACE)
        if recorded and not restarting:
            if recorded not in self._packages_present:  # one GCS lookup per package per apply, not per change
                self._packages_present[recorded] = package_exists(recorded)
            if self._packages_present[recorded]:
                return recorded
        return self._upload()

    def converge(
        self,
        resources: dict[str, ResourceState],
        change: ResourceChange,
        timeout_s: float,
        progress: Progress,
    ) -> dict[str, dict[str, Any]]:
        """Backends first (Serve, healthy, internal routes served), then the front proxy's rules. Each backend keeps
        its code package unless ``change`` restarts it; HTTP stays on the internal port."""
        self._handles.wait(change)
        if change.kind == BACKEND and change.action == Action.DELETE:
            self._wait_for_websockets(change.name, resources, progress)
        live, policies = deploy_serve(
            change, resources, lambda resource: self._package_for(resource, change),
            proxy_location=PROXY_LOCATIONS[self.spec.http_location],
            http_options={"host": "127.0.0.1", "port": self._serve_port},
            sealing_key=self.sealing_key, details=self._details, deploy=lambda config: self._dashboard().deploy(config),
            timeout_s=timeout_s, routes_problem=None if self.spec.http_location == "NoServer" else self._serve_routes_problem,
        )
        routed = routed_endpoints(policies)
        write_policies(policies, applied_endpoints() - set(policies))
        self._handles.written(policies)
        if self.spec.http_location != "NoServer":
            if self.spec.ingress == "direct":
                kept = self._render_direct(change, policies)
            else:
                try:
                    proxy_config = render_config(
                        self.spec.http_host, self.spec.http_port, int(self._serve_port or 0), routed,
                        self.front_proxy.pidfile, self._route_proof(), mirror_script=self.front_proxy.mirror_path,
                    )
                except ValueError as err:  # a value the state holds that no config could have given: never written
                    raise ProviderError(f"{change.address}: the front proxy's configuration was refused: {err}") from None
                kept = self.front_proxy.apply(proxy_config, self.spec.http_host, self.spec.http_port, drain_bound_s(routed))
            if kept.connections:
                progress(f"{kept.connections} open WebSocket connection(s) keep their backend until they close "
                         f"(at most {math.ceil(kept.at_most_s):g} s)")
        return live

    def _render_direct(self, change: ResourceChange, policies: dict[str, dict[str, Any]]) -> Kept:
        """``ingress="direct"``: write the routing (``replica_watch.Routing``), render it with the replicas Serve
        runs now and install it, under the render lock the replica watcher also takes. A backend with a replica on
        another machine, or none listed (a cluster started without direct ingress), is left to Serve's proxy."""
        import ray

        dashboard = self._dashboard()
        target = self._target()
        runtime_dir = self.front_proxy.runtime_dir
        routing = Routing(
            bind_host=self.spec.http_host, bind_port=self.spec.http_port, serve_port=int(self._serve_port or 0),
            policies=policies, token_path=(target[1] if target else None) or "", dashboard_url=dashboard.url,
            local_addresses=None if self.embedded is not None else sorted({"127.0.0.1", ray.util.get_node_ip_address()}),
            watcher=watcher_command(runtime_dir),
        )
        with render_lock(runtime_dir):
            routing.targets = reachable_targets(dashboard.replica_targets(), routing.local_addresses)
            try:
                proxy_config = render(routing, routing.targets, self.front_proxy)
            except (ValueError, OSError) as err:  # never written out
                raise ProviderError(f"{change.address}: the front proxy's configuration was refused: {err}") from None
            write_routing(runtime_dir, routing)
            return self.front_proxy.apply(
                proxy_config, self.spec.http_host, self.spec.http_port, drain_bound_s(routed_endpoints(policies)),
            )

    def _wait_for_websockets(self, backend: str, resources: dict[str, ResourceState], progress: Progress) -> None:
        """Before ``backend`` is deleted, wait until no open WebSocket is routed to it, at most the endpoints'
        deregistration delay (``drain_bound_s``: past it the front proxy closes them anyway)."""
        if self.spec.http_location == "NoServer":
            return
        open_now, stops_in = self.front_proxy.open_websockets(backend)
        if not open_now:
            return
        delays = [r.attributes.get("deregistration_delay_s", DEFAULT_DRAIN_S) for r in resources.values() if r.kind == ENDPOINT]
        # The endpoints' delay, or less when the workers holding them stop sooner (each keeps its own bound).
        bound = math.ceil(min(max(delays, default=DEFAULT_DRAIN_S), stops_in or float("inf")))
        progress(f"waiting for {open_now} open WebSocket connection(s) on {backend} to close (at most {bound:g} s)")
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline and self.front_proxy.open_websockets(backend)[0]:
            time.sleep(0.25)
        left = self.front_proxy.open_websockets(backend)[0]
        if left:
            progress(f"{left} WebSocket connection(s) on {backend} still open after {bound:g} s: closed with it")

    def _serve_routes_problem(self, apps: set[str]) -> Optional[str]:
        return serve_health.routes_problem(self._serve_port or 0, apps)

    def teardown(self, progress: Progress) -> None:
        """Stop the front proxy and the embedded cluster; a cluster servectl was only given keeps running."""
        if self.front_proxy.master_pid() is not None or self.front_proxy.workers_left():
            self.front_proxy.stop()
            progress("stopped the front proxy")
        if self.embedded is None:
            return
        import ray

        if ray.is_initialized():
            ray.shutdown()
            _connected["address"] = None
        if self.embedded.stop():
            progress("stopped the embedded Ray head")
