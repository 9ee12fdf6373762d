"""Desired state: what a loaded config asks for, as plain data the planner diffs.

Every attribute here is JSON-serialisable, because the same dicts are written
into the state file and shown in the plan.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, TypedDict

from servectl.config.blocks import HISTORY_KEEP, S3State
from servectl.model.kinds import BACKEND, ENDPOINT
from servectl.statuses import ProviderKind

DEFAULT_INGRESS = "python"  # LocalRay(ingress=…) when not given: through Serve's proxy


def replica_range(attributes: dict[str, Any]) -> tuple[int, int]:
    """(fewest, most) replicas a backend may run: equal unless it autoscales."""
    scaling = attributes.get("autoscaling")
    if scaling:
        return int(scaling["min_replicas"]), int(scaling["max_replicas"])
    count = int(attributes.get("num_replicas") or 0)
    return count, count


def initial_replicas(attributes: dict[str, Any]) -> int:
    """How many replicas an apply waits for: num_replicas, or autoscaling's initial (else min) count."""
    scaling = attributes.get("autoscaling")
    if scaling:
        initial = scaling.get("initial_replicas")
        return int(initial if initial is not None else scaling["min_replicas"])
    return int(attributes.get("num_replicas") or 0)


def address_of(kind: str, name: str) -> str:
    """The resource address ``KIND.NAME`` (e.g. ``backend.summarizer``), as Terraform addresses resources."""
    return f"{kind}.{name}"


def backends_used(endpoint_attributes: dict[str, Any]) -> list[str]:
    """The backends an endpoint's attributes name — its traffic, its shadows and its model ids' traffic — sorted:
    the one reading of an endpoint's references (its dependencies, composition cycles, what a targeted backend
    removal must move)."""
    by_model = {name for routed in (endpoint_attributes.get("models") or {}).values() for name in routed}
    return sorted({*(endpoint_attributes.get("traffic") or {}), *(endpoint_attributes.get("shadow") or {}), *by_model})


class ProviderRecord(TypedDict, total=False):
    """The provider as a plan and the state record it (``ProviderSpec.attributes``); the state adds ``live`` (what
    the provider's prepare() returned: the embedded head's address, the AWS cluster's token, …)."""

    kind: str
    address: Optional[str]
    http_host: str
    http_port: int
    http_location: str
    ingress: str  # recorded only when not "python" (the default)
    region: str  # AWS only
    cluster_name: str  # AWS only
    live: dict[str, Any]


@dataclass(frozen=True)
class ProviderSpec:
    """How to reach (or start) the cluster. ``address`` None means servectl owns an embedded head."""

    kind: ProviderKind
    address: Optional[str]
    http_host: str
    http_port: int
    http_location: str
    num_cpus: Optional[float]
    num_gpus: int
    resources: dict[str, float]
    auth_token_path: Optional[str]
    block: Optional[dict[str, Any]] = None  # a plugin provider's block as declared (AwsRay: region, node types, …)
    ingress: str = DEFAULT_INGRESS  # LocalRay(ingress=…): "python" (through Serve's proxy) or "direct"

    def attributes(self) -> "ProviderRecord":
        """What a plan and the state record of the provider: kind, address and the HTTP settings, plus region and
        cluster name for AWS.
        """
        extra = {"region": self.block["region"], "cluster_name": self.block["cluster_name"]} if self.block else {}
        return {
            **extra,
            "kind": self.kind,
            "address": self.address,
            "http_host": self.http_host,
            "http_port": self.http_port,
            "http_location": self.http_location,
            # Recorded only when set, so the states written before it existed compare equal.
            **({"ingress": self.ingress} if self.ingress != DEFAULT_INGRESS else {}),
        }


@dataclass(frozen=True)
class StateBackendSpec:
    """Where the state lives when not in the local file: an S3 object (see ``S3State``)."""

    bucket: str
    key: str
    region: str
    encrypt: bool = False
    kms_key_id: Optional[str] = None
    endpoint_url: Optional[str] = None
    kind: str = "s3"

    @classmethod
    def from_block(cls, block: S3State) -> "StateBackendSpec":
        """The spec of a config's ``S3State`` block."""
        return cls(
            bucket=block.bucket, key=block.key, region=block.region, encrypt=block.encrypt,
            kms_key_id=block.kms_key_id, endpoint_url=block.endpoint_url,
        )

    def describe(self) -> str:
        """``s3://BUCKET/KEY``, the state object's name in messages."""
        return f"s3://{self.bucket}/{self.key}"


@dataclass
class ResourceSpec:
    """One declared resource: its address, plain attributes, dependencies and where it was declared."""

    kind: str
    name: str
    attributes: dict[str, Any]
    depends_on: list[str] = field(default_factory=list)
    declared_at: str = ""

    @property
    def address(self) -> str:
        """``KIND.NAME``, the resource's address."""
        return address_of(self.kind, self.name)


@dataclass
class DesiredState:
    """Everything a loaded config asks for: the provider, the resources by address, the variables, where the state
    lives (None: the local file) and how many applied versions the history keeps; ``config_dir`` is where it is
    applied from.
    """

    config_dir: str
    provider: ProviderSpec
    resources: dict[str, ResourceSpec]
    variables: dict[str, Any]
    state_backend: Optional[StateBackendSpec] = None  # None: the local servectl.state.json
    history_keep: int = HISTORY_KEEP  # History(keep=…): applied versions the state's history keeps

    def backends(self) -> list[ResourceSpec]:
        """The backend resources, in the order ``resources`` holds them."""
        return [r for r in self.resources.values() if r.kind == BACKEND]

    def endpoints(self) -> list[ResourceSpec]:
        """The endpoint resources, in the order ``resources`` holds them."""
        return [r for r in self.resources.values() if r.kind == ENDPOINT]


