"""The AWS provider's config vocabulary: ``AwsRay``, ``NodeType``, ``LoadBalancer``.

Switching a config from ``LocalRay()`` to ``AwsRay(...)`` keeps every backend
and endpoint as it is; the node groups' sizes then follow from packing the
backends' replicas onto the node types.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from servectl import names
from servectl.config import Block, first_error, declaration_site
from servectl.errors import ConfigError

RESERVED_RESOURCES = ("memory", "object_store_memory")
MAX_WORKERS = 1_000  # per node type: an Auto Scaling group's size
MAX_NODE_RESOURCE = 100_000.0


class NodeType(BaseModel):
    """One kind of node: ``NodeType("gpu", instance_type="g5.xlarge", resources={"CPU": 4, "GPU": 1}, ...)``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    instance_type: str = Field(..., min_length=3, description="EC2 instance type, e.g. m6i.xlarge")
    resources: dict[str, float] = Field(..., description='what Ray may schedule on one node: {"CPU": 4, "GPU": 1, ...}')
    min_workers: int = Field(0, ge=0, le=MAX_WORKERS)
    max_workers: int = Field(10, ge=0, le=MAX_WORKERS)
    hourly_price: Optional[float] = Field(
        None, ge=0, le=10_000, allow_inf_nan=False, description="USD per node-hour, for the plan's cost lines"
    )

    def __init__(self, name: Optional[str] = None, /, **settings: Any) -> None:
        if name is not None:
            settings["name"] = name
        try:
            super().__init__(**settings)
        except ValidationError as err:
            label = settings.get("name", "?")
            raise ConfigError(f"{declaration_site()}: NodeType {label!r}: {first_error(err)}") from None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not names.matches(names.NAME, value):
            raise ValueError("use letters, digits, '-' or '_', starting with a letter")
        return value

    @field_validator("instance_type")
    @classmethod
    def _instance_type(cls, value: str) -> str:
        if not names.matches(names.INSTANCE_TYPE, value):
            raise ValueError("not an EC2 instance type like m6i.xlarge")
        return value

    @field_validator("resources")
    @classmethod
    def _resources(cls, value: dict[str, float]) -> dict[str, float]:
        if "CPU" not in value:
            raise ValueError('give the node\'s CPUs as resources={"CPU": N, ...}')
        for key, amount in value.items():
            if key not in ("CPU", "GPU") and not names.matches(names.RESOURCE, key):
                raise ValueError(f"resource name {key!r}: use letters, digits, '_', '.', ':' or '-', starting with a letter")
            if key in RESERVED_RESOURCES:
                raise ValueError(f"{key!r} is measured by Ray on the node; leave it out")
            if not 0 <= amount <= MAX_NODE_RESOURCE:
                raise ValueError(f"resource {key!r} must be between 0 and {MAX_NODE_RESOURCE:g}")
        if "GPU" in value and not float(value["GPU"]).is_integer():
            raise ValueError("a node has a whole number of GPUs")
        return value

    @model_validator(mode="after")
    def _range(self) -> "NodeType":
        if self.max_workers < self.min_workers:
            raise ValueError(f"max_workers {self.max_workers} is below min_workers {self.min_workers}")
        return self

    @property
    def cpus(self) -> float:
        """CPUs per node (``resources["CPU"]``)."""
        return float(self.resources.get("CPU", 0))

    @property
    def gpus(self) -> int:
        """Whole GPUs per node (``resources["GPU"]``; 0 without one)."""
        return int(self.resources.get("GPU", 0))

    @property
    def custom(self) -> dict[str, float]:
        """The node's custom Ray resources (all but CPU and GPU) as floats, sorted by name."""
        return {k: float(v) for k, v in sorted(self.resources.items()) if k not in ("CPU", "GPU")}


class LoadBalancer(BaseModel):
    """The public entry: an Application Load Balancer listener open only to ``allowed_cidrs``."""

    model_config = ConfigDict(extra="forbid")

    port: int = Field(80, ge=1, le=65535)
    allowed_cidrs: list[str] = Field(..., min_length=1, description="who may reach the listener, e.g. ['203.0.113.0/24']")
    internal: bool = Field(False, description="an internal load balancer (reachable only inside the VPC)")

    def __init__(self, **settings: Any) -> None:
        try:
            super().__init__(**settings)
        except ValidationError as err:
            raise ConfigError(f"{declaration_site()}: LoadBalancer: {first_error(err)}") from None

    @field_validator("allowed_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=True)
            except ValueError as err:
                raise ValueError(f"{cidr!r} is not a CIDR block ({err})") from None
        return value


# field -> (its rule, what it must be): checked by AwsRay._identifier.
IDENTIFIERS = {
    "cluster_name": (names.CLUSTER_NAME, "a cluster name: lowercase letters, digits and '-', at most 24, starting with a "
                     "letter (it names AWS resources)"),
    "region": (names.REGION, "an AWS region like us-east-1"),
    "image_id": (names.IMAGE_ID, "an AMI id like ami-0123456789abcdef0"),
    "key_name": (names.KEY_PAIR, "an EC2 key pair name of letters, digits, '.', '_' or '-'"),
    "code_bucket": (names.BUCKET, "a valid S3 bucket name (3-63 lowercase letters, digits, dots, hyphens)"),
    "vpc_id": (names.VPC_ID, "a VPC id like vpc-0123456789abcdef0"),
    "subnet_ids": (names.SUBNET_ID, "a subnet id like subnet-0123456789abcdef0"),
}


class AwsRay(Block):
    """An autoscaled Ray cluster on EC2: a head, one Auto Scaling group per node type, a load balancer."""

    region: str = Field(..., min_length=1)
    head: NodeType
    node_types: list[NodeType] = Field(..., min_length=1)
    load_balancer: LoadBalancer
    cluster_name: str = Field("servectl", description="prefix of every AWS resource's Name tag")
    image_id: Optional[str] = Field(None, description="AMI with Python 3.11; default: the region's Amazon Linux 2023")
    vpc_id: Optional[str] = Field(None, description="use this VPC (with subnet_ids) instead of creating one")
    subnet_ids: list[str] = Field(default_factory=list)
    code_bucket: Optional[str] = Field(None, description="bucket for the code zip; default: one servectl creates")
    key_name: Optional[str] = Field(None, description="EC2 key pair for SSH (no SSH rule is opened either way)")
    proxy_port: int = Field(8000, ge=1, le=65535, description="servectl's front proxy on every node: the target group's port")
    serve_port: int = Field(8001, ge=1, le=65535, description="Serve's own HTTP proxy on every node, behind the front proxy")
    dashboard_url: Optional[str] = Field(
        None, description="where the CLI reaches the head's dashboard (an SSH tunnel, a bastion); "
        "default: the head instance's private IP, port 8265"
    )
    head_timeout_s: float = Field(900, gt=0, description="how long apply waits for a new head's dashboard to answer")

    @field_validator(*IDENTIFIERS)
    @classmethod
    def _identifier(cls, value: Any, info: ValidationInfo) -> Any:
        """Each AWS identifier by its rule in servectl.names (they reach boot scripts and API calls)."""
        rule, expected = IDENTIFIERS[info.field_name]
        for item in value if isinstance(value, list) else [value]:
            if item is not None and (not names.matches(rule, item) or ".." in item):
                raise ValueError(f"{item!r} is not {expected}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "AwsRay":
        type_names = [t.name for t in self.node_types]
        duplicates = sorted({n for n in type_names if type_names.count(n) > 1})
        if duplicates:
            raise ValueError(f"node type {duplicates[0]!r} is declared twice")
        if "head" in type_names:
            raise ValueError("'head' names the head node; call the worker type something else")
        if bool(self.vpc_id) != bool(self.subnet_ids):
            raise ValueError("give vpc_id and subnet_ids together (or neither, and servectl creates the network)")
        if self.proxy_port == self.serve_port:
            raise ValueError(f"proxy_port and serve_port are both {self.serve_port}; the front proxy forwards to Serve")
        if self.dashboard_url is not None and not re.fullmatch(r"https?://[A-Za-z0-9.\[\]:-]+/?", self.dashboard_url):
            raise ValueError(f"dashboard_url {self.dashboard_url!r} is not an http(s)://host:port address")
        if self.subnet_ids and len(self.subnet_ids) < 2:
            raise ValueError("a load balancer needs subnet_ids in at least two availability zones")
        return self
