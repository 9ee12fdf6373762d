"""The AWS provider: the whole cluster planned, its AWS resources and Serve applied, routing on every node.

Planning needs no AWS call: the node groups' sizes come from packing the
backends onto the declared node types (``servectl.providers.aws.infra``). The AWS
resources are created, resized and deleted through ``resources``. Serve
is deployed through the head's dashboard REST API with the cluster's Ray
token (no Ray import, no GCS connection from the CLI); the code reaches the
nodes as the zip ``aws_s3_object.code`` in S3, named in each application's
``runtime_env``. Routing (weights, shard keys, shadows) is a document in the
code bucket that every node's agent applies to its front proxy
(``routing``, ``servectl.node_agent``).
"""
from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
from typing import Any, Optional

from servectl.loading import bundle
from servectl.providers.aws.agent_code import freeze_servectl
from servectl.providers.aws.infra import NODE_GROUP, code_bucket
from servectl.model.desired import BACKEND, ENDPOINT, ProviderSpec
from servectl.errors import ProviderError
from servectl.model.plan import Action, ResourceChange
from servectl.providers.aws import resources as aws
from servectl.providers import serve_apps, serve_health
from servectl.providers.aws.routing import RoutingStore
from servectl.providers.base import ClusterView, LiveView, Progress, Provider
from servectl.providers.dashboard import RayDashboard
from servectl.providers.front_proxy import DEFAULT_DRAIN_S
from servectl.providers.serve_deploy import HandleDrain, deploy_serve
from servectl.runtime.sealed import key_from_token
from servectl.sensitive import MARK, remember, reveal
from servectl.state.document import ResourceState

DASHBOARD_PORT = 8265
CODE = "aws_s3_object.code"


class AwsRayProvider(Provider):
    """The ``AwsRay`` provider: a Ray cluster on EC2 node groups that servectl plans, creates and deletes itself.

    AWS resources go through ``resources``; Serve through the head's dashboard REST API with the cluster's Ray
    token; routing through the ``RoutingStore`` document in the code bucket, which every node's agent applies.
    """

    def __init__(self, spec: ProviderSpec, config_dir: str, code_dir: Optional[str] = None) -> None:
        assert spec.block is not None
        self.spec = spec
        self.config_dir = config_dir
        self.code_dir = code_dir or config_dir
        self.ctx = aws.AwsContext(region=spec.block["region"], cluster=spec.block["cluster_name"])
        self.recorded: dict[str, Any] = {}
        self._zipped: Optional[bytes] = None
        self._rest: Optional[RayDashboard] = None
        self._unreachable = ""
        self._handles = HandleDrain()

    def recall(self, recorded: dict[str, Any]) -> None:
        """The provider identifiers the last apply recorded (the cluster's Ray token above all)."""
        self.recorded = dict(recorded or {})

    def token(self) -> str:
        """Ray's auth token for this cluster: generated once, then kept (as a sensitive value) in the state."""
        if "ray_token" not in self.recorded:
            self.recorded["ray_token"] = {MARK: secrets.token_hex(32)}
        token = str(reveal(self.recorded["ray_token"]))
        remember(token)  # masked in everything this process prints, from its first use
        return token

    def sealing_key(self) -> bytes:
        """Derived from the cluster's Ray token, which every node reads at boot: replicas open what this seals."""
        return key_from_token(self.token())

    def cluster(self) -> ClusterView:
        """No live nodes (source "projected"): the planner sizes the node groups itself from the declared node types."""
        return ClusterView(nodes=[], source="projected")  # the planner sizes node groups itself

    def environment_problems(self, backends: dict[str, dict[str, Any]]) -> dict[str, str]:
        """Always none: the nodes may not exist at plan time, so there is nothing to ask."""
        return {}  # the nodes do not exist yet: nothing to ask

    def prepare(self, progress: Progress) -> dict[str, Any]:
        """Nothing to start from here: the nodes come with the node groups. Keep the cluster's token."""
        self.token()
        return {"ray_token": self.recorded["ray_token"], "region": self.ctx.region, "cluster_name": self.ctx.cluster}

    def unmanaged_conflicts(self, managed: set[str]) -> list[str]:
        """Serve applications on an existing head that the state does not record (none before the head exists)."""
        rest = self._dashboard(wait_s=0)
        if rest is None:
            return []
        return serve_apps.strangers(rest.serve_details(), managed)

    # --- where the head is --------------------------------------------------------------------------------
    def _dashboard_url(self) -> Optional[str]:
        configured = self.spec.block.get("dashboard_url") if self.spec.block else None
        if configured:
            return str(configured).rstrip("/")
        found = self.ctx.client("ec2").describe_instances(Filters=[
            {"Name": f"tag:{aws.TAG}", "Values": [self.ctx.cluster]},
            {"Name": "tag:servectl:role", "Values": ["head"]},
            {"Name": "instance-state-name", "Values": ["running"]},
        ])
        for reservation in found.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                if instance.get("PrivateIpAddress"):
                    return f"http://{instance['PrivateIpAddress']}:{DASHBOARD_PORT}"
        return None

    def _dashboard(self, wait_s: float) -> Optional[RayDashboard]:
        """The head's dashboard once it answers, waiting up to ``wait_s`` (a new head installs Ray first)."""
        if self._rest is not None:
            return self._rest
        deadline = time.monotonic() + wait_s
        last = "no running head instance yet"
        while True:
            url = self._dashboard_url()
            if url:
                rest = RayDashboard(url, self.token(), timeout_s=5)
                try:
                    rest.serve_details()
                    self._rest = RayDashboard(url, self.token())
                    return self._rest
                except ProviderError as err:
                    last = str(err)
            if time.monotonic() >= deadline:
                self._unreachable = last
                if wait_s > 0:
                    raise ProviderError(
                        f"the head's dashboard did not answer within {wait_s:.0f}s ({last}); check the head instance's "
                        "console output, or set AwsRay(dashboard_url=…) to a tunnel that reaches it"
                    )
                return None
            time.sleep(2)

    def _head(self) -> RayDashboard:
        rest = self._dashboard(wait_s=float((self.spec.block or {}).get("head_timeout_s", 900)))
        assert rest is not None
        return rest

    def _routing(self) -> RoutingStore:
        return RoutingStore(self.ctx.client("s3"), code_bucket(self.spec.block or {}), self.ctx.cluster)

    def _code(self, label: str) -> bytes:
        if label == "agent":
            return freeze_servectl()
        if self._zipped is None:
            self._zipped = bundle.freeze(self.code_dir)
        return self._zipped

    def converge(
        self, resources: dict[str, ResourceState], change: ResourceChange, timeout_s: float, progress: Progress
    ) -> dict[str, dict[str, Any]]:
        """Apply one change: backends and endpoints through Serve and the routing document, the rest through AWS.

        A delete finds the resource's ids in AWS by name and tags; a replace deletes the old one before creating the new
        (Terraform's delete-then-create), except code zips, which are kept; a NOOP leaves AWS as it is. Returns the live
        identifiers by address of what it created, updated or deployed ({} after a delete). Raises ProviderError when an
        AWS call fails or Serve or the node agents do not take the change within ``timeout_s`` seconds.
        """
        if change.kind in (BACKEND, ENDPOINT):
            return self._converge_serve(resources, change, timeout_s, progress)
        if change.action is Action.NOOP:  # a revert after a failed change: AWS keeps what it has
            return {}
        self.ctx.live = {address: resource.live for address, resource in resources.items() if resource.live}
        kind, label = change.kind, change.name
        if change.action is Action.DELETE:
            # The state no longer lists it, so its ids come from AWS itself (by name and tags).
            aws.delete(self.ctx, kind, aws.find_live(self.ctx, kind, label, change.before or {}))
            progress(f"{change.address}: deleted")
            return {}
        attributes = change.after or {}
        if change.action is Action.UPDATE:
            live = aws.update(self.ctx, kind, label, attributes, resources[change.address].live, self.token())
            return {change.address: live}
        if change.action is Action.REPLACE and kind != "aws_s3_object":
            # Code zips are content-addressed and kept: backends this apply does not
            # restart still run from theirs, and nodes that join later fetch it.
            old = resources[change.address].live or aws.find_live(self.ctx, kind, label, change.before or {})
            aws.delete(self.ctx, kind, old)
        code = self._code(label) if kind == "aws_s3_object" else b""
        live = aws.create(self.ctx, kind, label, attributes, code, self.token())
        self.ctx.live[change.address] = live
        return {change.address: live}

    def _converge_serve(
        self, resources: dict[str, ResourceState], change: ResourceChange, timeout_s: float, progress: Progress
    ) -> dict[str, dict[str, Any]]:
        """Serve's applications through the head's dashboard, then the routing document every node agent applies."""
        rest = self._head()
        self._handles.wait(change)
        code = resources.get(CODE)
        if code is None or not code.live.get("uri"):
            raise ProviderError(f"{change.address}: {CODE} has no uploaded zip in the state; run apply again to create it")

        def package_for(resource: ResourceState) -> str:
            restarting = change.address == resource.address and change.action in (Action.CREATE, Action.REPLACE)
            recorded = resource.live.get("package_uri")
            return str(recorded) if recorded and not restarting else str(code.live["uri"])

        serve_port = int((self.spec.block or {}).get("serve_port", 8001))
        if change.kind == BACKEND and change.action is Action.DELETE:
            self._wait_for_websockets(change.name, resources, sorted({str(n["node_ip"]) for n in rest.nodes()}), progress)
        live, policies = deploy_serve(
            change, resources, package_for, proxy_location=serve_apps.PROXY_LOCATIONS["EveryNode"],
            http_options={"host": "0.0.0.0", "port": serve_port}, sealing_key=self.sealing_key,
            details=rest.serve_details, deploy=rest.deploy, timeout_s=timeout_s,
        )
        routing = self._routing()
        backends = [r.name for r in resources.values() if r.kind == BACKEND]
        node_groups = {
            r.name: {"asg_name": r.live.get("asg_name") or self.ctx.name(r.name), "resources": r.attributes["node_resources"],
                     "min_size": r.attributes["min_size"], "max_size": r.attributes["max_size"]}
            for r in resources.values()
            if r.kind == NODE_GROUP and r.name != "head"
        }
        version = routing.publish(policies, backends, serve_port, node_groups)
        nodes = sorted({str(node["node_ip"]) for node in rest.nodes()})
        progress(f"{change.address}: routing version {version} published; waiting for {len(nodes)} node(s)")
        routing.wait_for(version, nodes, timeout_s)
        self._handles.written(policies)
        return live

    def _wait_for_websockets(
        self, backend: str, resources: dict[str, ResourceState], node_ips: list[str], progress: Progress,
    ) -> None:
        """Before ``backend`` is deleted, wait until no node's front proxy holds an open WebSocket on it (as the node
        agents report), at most the endpoints' longest deregistration delay: past it the nodes' previous HAProxy
        workers close them anyway (their ``hard-stop-after``). The local provider's wait, over every node."""
        delays = [r.attributes.get("deregistration_delay_s", DEFAULT_DRAIN_S) for r in resources.values() if r.kind == ENDPOINT]
        self._routing().wait_for_websockets(backend, node_ips, math.ceil(max(delays, default=DEFAULT_DRAIN_S)), progress)

    def observe(self) -> LiveView:
        """Serve's backends on the head, the routing document's endpoints, the live node count, and ``infra``: the node
        groups' sizes and whether the target group exists. No ``metrics_urls``. Raises ProviderError when no head
        answers.
        """
        rest = self._dashboard(wait_s=0)
        if rest is None:
            raise ProviderError(
                f"cannot read Serve on the head of AWS cluster {self.ctx.cluster!r} in {self.ctx.region} "
                f"({self._unreachable}); is the head running, and does its dashboard answer from here "
                "(AwsRay(dashboard_url=…) for a tunnel)?"
            )
        details = rest.serve_details()
        document = self._routing().current() or {}
        return LiveView(
            backends=serve_health.live_backends(details, self.sealing_key() if "ray_token" in self.recorded else None),
            metrics_urls=[],
            endpoints=dict(document.get("endpoints") or {}), nodes=len(rest.nodes()), infra=self._observe_infra(),
        )

    def _observe_infra(self) -> dict[str, Optional[dict[str, Any]]]:
        """The node groups' sizes (a hand resize is drift) and whether the target group still exists."""
        labels = ["head", *[t["name"] for t in (self.spec.block or {}).get("node_types", [])]]
        seen: dict[str, Optional[dict[str, Any]]] = {}
        for label in labels:
            group = aws.read_node_group(self.ctx, aws.find_live(self.ctx, "node_group", label, {}))
            seen[f"node_group.{label}"] = (
                None if group is None else {k: group[k] for k in ("min_size", "max_size", "desired_capacity")}
            )
        target = aws.find_live(self.ctx, "aws_lb_target_group", "serve", {})
        seen["aws_lb_target_group.serve"] = {} if target else None
        return seen

    def fingerprint(self) -> Optional[str]:
        """A digest of Serve's applications on the head and the routing document's version; None while no head
        answers (a cluster not created yet). A saved plan is refused when it moved."""
        rest = self._dashboard(wait_s=0)
        if rest is None:
            return None
        apps = {name: app.get("deployed_app_config")
                for name, app in sorted((rest.serve_details().get("applications") or {}).items())}
        routing = (self._routing().current() or {}).get("version")
        body = json.dumps({"apps": apps, "routing": routing}, sort_keys=True, default=str)
        return hashlib.sha256(body.encode()).hexdigest()

    def teardown(self, progress: Progress) -> None:
        """After a destroy the nodes are gone with their groups; only the routing document and reports may remain."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._routing().clear()
        except (ClientError, BotoCoreError):
            pass  # the bucket went with the destroy
