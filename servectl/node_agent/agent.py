"""The node agent: keeps one AWS node's front proxy on the routing policy apply published.

Started by the node's user data (``python3.11 -m servectl.node_agent …``,
servectl itself fetched from the code bucket). It polls the routing document
(conditional GETs: an unchanged document costs nothing), renders the same
HAProxy configuration the local provider's front proxy uses — listening on
the target group's port, forwarding to Serve's proxy on this node — reloads
it without dropping connections, and reports the version it serves. On the
head (``--ray-address``) it also copies the policies into the cluster's key-
value store, where deployment handles read them.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from servectl import names
from servectl.node_agent.scaler import IDLE_S, HeadScaling, NodeScaler
from servectl.providers import serve_health
from servectl.providers.aws.routing import RoutingStore
from servectl.providers.front_proxy import (
    DEFAULT_DRAIN_S, FrontProxy, check_policy, drain_bound_s, render_config, routed_endpoints,
)
from servectl.runtime.proof import route_proof

log = logging.getLogger("servectl.node_agent")


@dataclass
class NodeAgent:
    """The agent on one node: the routing store it polls, the front proxy it drives, what it applied and reported.

    ``applied`` is the last routing document taken; ``reported`` the ``(version, serving)`` last reported.
    """

    store: RoutingStore
    proxy: FrontProxy
    node_ip: str
    listen_host: str
    listen_port: int
    ray_address: Optional[str] = None
    token_path: Optional[str] = None
    applied: Optional[dict[str, Any]] = None
    reported: Optional[tuple[int, bool]] = None
    reported_detail: str = ""
    reported_websockets: dict[str, int] = field(default_factory=dict)
    scaling: Optional[HeadScaling] = None  # on the head: node groups follow demand
    _etag: Optional[str] = None

    def step(self) -> None:
        """One poll: take a new document if there is one, then report once Serve answers for it.

        A document is checked whole before anything is written (the same rules
        as the config language's, ``front_proxy.check_inputs``); one that breaks
        a rule is refused and reported, and the proxy keeps what it serves. The
        document's ETag is kept only once it is applied or refused, so a failed
        reload is retried on the next poll.
        """
        document, etag = self.store.read(self._etag)
        if document is not None and document.get("version") != (self.applied or {}).get("version"):
            try:
                version, serve_port, endpoints, backends = checked_document(document)
                routed = routed_endpoints(endpoints)
                config = render_config(
                    self.listen_host, self.listen_port, serve_port, routed,
                    self.proxy.pidfile, self._route_proof(), mirror_script=self.proxy.mirror_path,
                )
            except (ValueError, KeyError, TypeError) as err:
                log.error("refused routing document version %r: %s", document.get("version"), err)
                self.store.report(self.node_ip, _version_of(document), False, f"refused the routing document: {err}")
                self._etag = etag  # the same bytes would be refused again
                return
            kept = self.proxy.apply(config, self.listen_host, self.listen_port, drain_bound_s(routed))
            if kept.connections:
                log.info("%d open WebSocket connection(s) keep their backend until they close (at most %.0f s)",
                         kept.connections, kept.at_most_s)
            if self.ray_address:
                self._share_with_handles(endpoints)
            self.applied = {**document, "version": version, "serve_port": serve_port, "backends": backends}
            log.info("front proxy on routing version %s", version)
        self._etag = etag
        if self.applied is None:
            return
        if self.scaling is not None:
            for line in self.scaling.maybe_run(self.applied):
                log.info("%s", line)
        version = int(self.applied["version"])
        websockets = self.proxy.websockets_by_backend()
        if self.reported is not None and websockets != self.reported_websockets:
            # Apply waits for these to close before it removes their backend: said as they change.
            self.store.report(self.node_ip, *self.reported, self.reported_detail, websockets)
            self.reported_websockets = websockets
        if self.reported == (version, True):
            return  # reported serving this version: nothing to ask Serve until a new version comes
        problem = serve_health.routes_problem(int(self.applied["serve_port"]), set(self.applied.get("backends") or []))
        if problem is not None and "not answering" not in problem:
            return  # Serve is still learning the routes: report when it serves them
        # No Serve proxy on this node (Ray starts one only where replicas or the
        # controller live): the proxy still takes the version, and the load
        # balancer's health check keeps traffic off until Serve answers here.
        serving = problem is None
        if self.reported != (version, serving):
            self.store.report(self.node_ip, version, serving, problem or "", websockets)
            self.reported, self.reported_detail, self.reported_websockets = (version, serving), problem or "", websockets

    def _route_proof(self) -> str:
        """The proof replicas expect of this node's front proxy, from the cluster's token (this node's copy)."""
        if not self.token_path:
            return ""
        with open(self.token_path, encoding="utf-8") as handle:
            return route_proof(handle.read().strip())

    def _share_with_handles(self, endpoints: dict[str, dict[str, Any]]) -> None:
        from servectl.routing.policy import applied_endpoints, write_policies
        from servectl.providers.local_ray import connect

        connect(self.ray_address or "", self.token_path)
        write_policies(endpoints, applied_endpoints() - set(endpoints))

    def run(self, interval_s: float) -> None:
        """Poll every ``interval_s`` seconds, forever; a poll that fails is logged and the next one tries again."""
        while True:
            try:
                self.step()
            except Exception as err:  # noqa: BLE001 - an agent outlives one bad poll (S3 blip, Serve restarting)
                log.warning("poll failed: %s: %s", type(err).__name__, err)
            time.sleep(interval_s)


def _version_of(document: dict[str, Any]) -> int:
    version = document.get("version")
    return version if isinstance(version, int) and not isinstance(version, bool) else 0


def checked_document(document: Any) -> tuple[int, int, dict[str, dict[str, Any]], list[str]]:
    """The routing document's version, Serve's port, endpoints and backends, each checked; ValueError otherwise."""
    if not isinstance(document, dict):
        raise ValueError("the document is not a JSON object")
    version, serve_port = document.get("version"), document.get("serve_port")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"version {version!r} is not a positive integer")
    if not isinstance(serve_port, int) or isinstance(serve_port, bool) or not 1 <= serve_port <= 65535:
        raise ValueError(f"serve_port {serve_port!r} is not a port number")
    endpoints = document.get("endpoints") or {}
    backends = document.get("backends") or []
    if not isinstance(endpoints, dict) or not isinstance(backends, list):
        raise ValueError("endpoints must be an object and backends a list")
    for name, policy in endpoints.items():
        if not isinstance(policy, dict):
            raise ValueError(f"endpoint {name!r}'s policy is not an object")
        # Every endpoint, routed or handle-only: handles read these policies from the head's key-value store.
        check_policy(name, policy.get("segments"), policy.get("shadow") or {}, policy.get("timeouts") or {},
                     policy.get("models") or {}, policy.get("deregistration_delay_s", DEFAULT_DRAIN_S))
        if policy.get("route") is not None:
            names.require(names.ROUTE, policy["route"], f"endpoint {name}'s route")
    for backend in backends:
        names.require(names.NAME, backend, "backend name")
    return version, serve_port, endpoints, backends


def main(argv: Optional[list[str]] = None) -> int:
    """The agent's command line (``python3.11 -m servectl.node_agent``): parse flags, build the agent, run it.

    With ``--scale`` (on the head) it also sizes the node groups from Serve's demand. ``run`` loops forever, so the
    exit status 0 is returned only if it ever stops.
    """
    parser = argparse.ArgumentParser(prog="servectl-node-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--region", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--node-ip", required=True, help="this node's Ray node IP (names its report)")
    parser.add_argument("--listen", default="0.0.0.0:8000", help="HOST:PORT of the front proxy (the target group's port)")
    parser.add_argument("--runtime-dir", default="/var/lib/servectl", help="where the proxy's config and PID file live")
    parser.add_argument("--ray-address", help="on the head: the GCS address, to share policies with handles")
    parser.add_argument("--token-path", default=os.environ.get("RAY_AUTH_TOKEN_PATH"))
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--scale", action="store_true", help="on the head: size the node groups with demand")
    parser.add_argument("--scale-interval", type=float, default=30.0)
    parser.add_argument("--idle-s", type=float, default=IDLE_S, help="how long a node holds no replica before it goes")
    parser.add_argument("--dashboard-url", default="http://127.0.0.1:8265", help="the head's dashboard, for --scale")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    import boto3

    host, _, port = args.listen.rpartition(":")
    store = RoutingStore(boto3.session.Session().client("s3", region_name=args.region), args.bucket, args.cluster)
    agent = NodeAgent(
        store=store, proxy=FrontProxy(args.runtime_dir), node_ip=args.node_ip, listen_host=host or "0.0.0.0",
        listen_port=int(port), ray_address=args.ray_address, token_path=args.token_path,
    )
    if args.scale:
        from servectl.providers.dashboard import RayDashboard

        token = open(args.token_path, encoding="utf-8").read().strip() if args.token_path else None
        session = boto3.session.Session()
        agent.scaling = HeadScaling(
            scaler=NodeScaler(idle_s=args.idle_s), autoscaling=session.client("autoscaling", region_name=args.region),
            ec2=session.client("ec2", region_name=args.region),
            details=RayDashboard(args.dashboard_url, token).serve_details, interval_s=args.scale_interval,
        )
    agent.run(args.interval)
    return 0


