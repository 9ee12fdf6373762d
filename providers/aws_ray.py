"""The AWS provider: plans the whole cluster; applies its AWS resources; Serve on it comes next.

Planning needs no AWS call: the node groups' sizes come from packing the
backends onto the declared node types (``servectl.aws_infra``). The AWS
resources are created, resized and deleted through ``aws_resources`` (tested
on moto_server). Deploying Serve through the head's dashboard and routing on
every node are the rest of issue #6: until they exist, ``prepare`` — the
first step of every apply — refuses in one line, so no apply can stop halfway
with machines running.
"""
from __future__ import annotations

import secrets
from typing import Any, Optional

from servectl import bundle
from servectl.desired import BACKEND, ENDPOINT, ProviderSpec
from servectl.errors import ProviderError
from servectl.plan import Action, ResourceChange
from servectl.providers import aws_resources as aws
from servectl.providers.base import ClusterView, LiveView, Progress, Provider
from servectl.sensitive import MARK, reveal
from servectl.state.document import ResourceState

NOT_YET = (
    "the AWS provider can plan but not yet apply, observe or destroy (issue #6 is in progress); "
    "use `servectl plan` to see what it will create"
)


class AwsRayProvider(Provider):
    def __init__(self, spec: ProviderSpec, config_dir: str, code_dir: Optional[str] = None) -> None:
        assert spec.aws is not None
        self.spec = spec
        self.config_dir = config_dir
        self.code_dir = code_dir or config_dir
        self.ctx = aws.AwsContext(region=spec.aws["region"], cluster=spec.aws["cluster_name"])
        self.recorded: dict[str, Any] = {}
        self._zipped: Optional[bytes] = None

    def recall(self, recorded: dict[str, Any]) -> None:
        """The provider identifiers the last apply recorded (the cluster's Ray token above all)."""
        self.recorded = dict(recorded or {})

    def token(self) -> str:
        """Ray's auth token for this cluster: generated once, then kept (as a sensitive value) in the state."""
        if "ray_token" not in self.recorded:
            self.recorded["ray_token"] = {MARK: secrets.token_hex(32)}
        return str(reveal(self.recorded["ray_token"]))

    def cluster(self) -> ClusterView:
        return ClusterView(nodes=[], source="projected")  # the planner sizes node groups itself

    def environment_problems(self, backends: dict[str, dict[str, Any]]) -> dict[str, str]:
        return {}  # the nodes do not exist yet: nothing to ask

    def prepare(self, progress: Progress) -> dict[str, Any]:
        raise ProviderError(NOT_YET)

    def unmanaged_conflicts(self, managed: set[str]) -> list[str]:
        raise ProviderError(NOT_YET)

    def _code(self) -> bytes:
        if self._zipped is None:
            self._zipped = bundle.freeze(self.code_dir)
        return self._zipped

    def converge(
        self, resources: dict[str, ResourceState], change: ResourceChange, timeout_s: float, progress: Progress
    ) -> dict[str, dict[str, Any]]:
        if change.kind in (BACKEND, ENDPOINT):
            raise ProviderError(NOT_YET)
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
            live = aws.update(self.ctx, kind, label, attributes, resources[change.address].live)
            return {change.address: live}
        if change.action is Action.REPLACE:
            old = resources[change.address].live or aws.find_live(self.ctx, kind, label, change.before or {})
            aws.delete(self.ctx, kind, old)
        live = aws.create(self.ctx, kind, label, attributes, self._code() if kind == "aws_s3_object" else b"", self.token())
        self.ctx.live[change.address] = live
        return {change.address: live}

    def observe(self) -> LiveView:
        raise ProviderError(NOT_YET)

    def fingerprint(self) -> Optional[str]:
        return None

    def teardown(self, progress: Progress) -> None:
        raise ProviderError(NOT_YET)
