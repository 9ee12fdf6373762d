"""The AWS provider, as far as it goes today: it plans (node groups, network, load balancer) but cannot apply yet.

Planning needs no AWS call: the node groups' sizes come from packing the
backends onto the declared node types (``servectl.aws_infra``). Applying —
creating the resources with boto3 and deploying Serve through the head's
dashboard REST API — is the next increment of issue #6; until then every
command that would touch AWS says so in one line instead of half-working.
"""
from __future__ import annotations

from typing import Any, Optional

from servectl.desired import ProviderSpec
from servectl.errors import ProviderError
from servectl.plan import ResourceChange
from servectl.providers.base import ClusterView, LiveView, Progress, Provider
from servectl.state.document import ResourceState

NOT_YET = (
    "the AWS provider can plan but not yet apply, observe or destroy (issue #6 is in progress); "
    "use `servectl plan` to see what it will create"
)


class AwsRayProvider(Provider):
    def __init__(self, spec: ProviderSpec, config_dir: str, code_dir: Optional[str] = None) -> None:
        self.spec = spec
        self.config_dir = config_dir
        self.code_dir = code_dir or config_dir

    def cluster(self) -> ClusterView:
        return ClusterView(nodes=[], source="projected")  # the planner sizes node groups itself

    def environment_problems(self, backends: dict[str, dict[str, Any]]) -> dict[str, str]:
        return {}  # the nodes do not exist yet: nothing to ask

    def prepare(self, progress: Progress) -> dict[str, Any]:
        raise ProviderError(NOT_YET)

    def unmanaged_conflicts(self, managed: set[str]) -> list[str]:
        raise ProviderError(NOT_YET)

    def converge(
        self, resources: dict[str, ResourceState], change: ResourceChange, timeout_s: float, progress: Progress
    ) -> dict[str, dict[str, Any]]:
        raise ProviderError(NOT_YET)

    def observe(self) -> LiveView:
        raise ProviderError(NOT_YET)

    def fingerprint(self) -> Optional[str]:
        return None

    def teardown(self, progress: Progress) -> None:
        raise ProviderError(NOT_YET)
