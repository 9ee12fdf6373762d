"""What an ``AwsRay`` block asks AWS for, as plain resources the planner diffs like backends.

Node groups are sized here: the backends' replicas are packed onto the node
types three times — at their initial counts (the groups' desired sizes), at
their minimums and at their maximums (the groups' min and max sizes) — so the
plan shows GPU-node changes before anything is created, and a placement no
node group can hold fails at plan time.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

from servectl.errors import ConfigError, PlanError
from servectl.loading.bundle import digest as bundle_digest, shipped_digest
from servectl.providers.aws.agent_code import freeze_servectl
from servectl.model.capacity import PlacementSummary
from servectl.model.desired import ProviderSpec, ResourceSpec, StateBackendSpec, initial_replicas, replica_range
from servectl.model.kinds import ProviderPlugin, register
from servectl.planning.fleet import FleetPacking, NodeShape, fits_empty, pack_fleet
from servectl.planning.placement import ReplicaDemand
from servectl.providers.aws.config import AwsRay
from servectl.statuses import ProviderKind

NODE_GROUP = "node_group"
NETWORK = "aws_network"
SECURITY_GROUP = "aws_security_group"
IAM_ROLE = "aws_iam_role"
TOKEN_PARAMETER = "aws_ssm_parameter"
LAUNCH_TEMPLATE = "aws_launch_template"
CODE_BUCKET = "aws_s3_bucket"
CODE_OBJECT = "aws_s3_object"
LOAD_BALANCER = "aws_lb"
TARGET_GROUP = "aws_lb_target_group"
LISTENER = "aws_lb_listener"
# What AWS changes without replacing the resource (the rest is a new resource, old one deleted after).
IN_PLACE_INFRA_ATTRIBUTES = {
    NODE_GROUP: frozenset({"min_size", "max_size", "desired_capacity", "hourly_price", "launch_template", "replicas"}),
    SECURITY_GROUP: frozenset({"ingress"}),
    TARGET_GROUP: frozenset({"health_check"}),
    # A changed template is a new version of it: nodes launched from then on boot with it.
    LAUNCH_TEMPLATE: frozenset({"instance_type", "image_id", "ray_resources", "ray_version", "key_name", "agent_key",
                                "proxy_port", "serve_port"}),
}

HEALTH_PATH = "/-/healthz"
RAY_VERSION = "2.60.0"


def shapes(block: AwsRay) -> list[NodeShape]:
    """The block's worker node types as the fleet packer's shapes: resources, min/max workers and hourly price."""
    return [
        NodeShape(
            name=t.name, cpus=t.cpus, gpus=t.gpus, resources=t.custom, min_nodes=t.min_workers,
            max_nodes=t.max_workers, hourly_price=t.hourly_price,
        )
        for t in block.node_types
    ]


def _demands(backends: list[ResourceSpec], count: Callable[[dict[str, Any]], int]) -> list[tuple[ReplicaDemand, int]]:
    return [
        (ReplicaDemand.from_actor_options(spec.name, spec.attributes["ray_actor_options"]), count(spec.attributes))
        for spec in backends
        if count(spec.attributes) > 0
    ]


def _refuse_unplaced(packing: FleetPacking, block: AwsRay, backends: list[ResourceSpec], when: str) -> None:
    if packing.feasible:
        return
    demand, missing = packing.unplaced[0]
    spec = next(s for s in backends if s.name == demand.backend)
    fleet = shapes(block)
    holders = [shape for shape in fleet if fits_empty(shape, demand)]
    if not holders:
        offered = "; ".join(f"{t.name}: {', '.join(f'{k} {v:g}' for k, v in sorted(t.resources.items()))}"
                            for t in block.node_types)
        raise PlanError(
            f"{spec.declared_at}: backend.{demand.backend}: a replica needs {{{demand.describe()}}}, which no node type "
            f"offers ({offered}); change ray_actor_options or add a node type that has it"
        )
    names = ", ".join(f"{shape.name} {shape.max_nodes}" for shape in holders)
    raise PlanError(
        f"{spec.declared_at}: backend.{demand.backend}: {missing} replica(s) needing {{{demand.describe()}}} do not fit "
        f"{when} even with the node groups that can hold them at max_workers ({names}); raise max_workers or "
        "lower the replicas"
    )


def size_node_groups(block: AwsRay, backends: list[ResourceSpec]) -> dict[str, dict[str, Any]]:
    """Per node type: min, desired and max nodes, and which backends' replicas land there at the desired size."""
    fleet = shapes(block)
    at_initial = pack_fleet(_demands(backends, initial_replicas), fleet)
    _refuse_unplaced(at_initial, block, backends, "at their initial counts")
    at_min = pack_fleet(_demands(backends, lambda a: replica_range(a)[0]), fleet)
    at_max = pack_fleet(_demands(backends, lambda a: replica_range(a)[1]), fleet)
    _refuse_unplaced(at_max, block, backends, "at autoscaling's max_replicas")
    sizes = {}
    for node_type in block.node_types:
        name = node_type.name
        sizes[name] = {
            "min_size": at_min.nodes[name],
            "desired_capacity": at_initial.nodes[name],
            "max_size": max(at_max.nodes[name], at_initial.nodes[name]),
            "replicas": at_initial.replicas[name],
        }
    return sizes


def token_parameter_name(cluster: str) -> str:
    """The SSM Parameter Store name of a cluster's Ray token."""
    return f"/servectl/{cluster}/ray-token"


def code_bucket(block: dict[str, Any]) -> str:
    """The bucket holding the code zips and the routing policy: the given one, or the one servectl creates."""
    return str(block.get("code_bucket") or f"{block['cluster_name']}-code-{block['region']}")


def infra_resources(
    block: AwsRay, backends: list[ResourceSpec], code_sha256: str, agent_sha256: str
) -> dict[str, ResourceSpec]:
    """Every AWS resource the block asks for, keyed by address, in creation order."""
    site = block.declared_at
    name = block.cluster_name
    out: dict[str, ResourceSpec] = {}

    def add(kind: str, label: str, attributes: dict[str, Any], depends_on: list[str]) -> str:
        spec = ResourceSpec(kind=kind, name=label, attributes=attributes, depends_on=depends_on, declared_at=site)
        out[spec.address] = spec
        return spec.address

    network = add(NETWORK, "main", {
        "region": block.region,
        "vpc_id": block.vpc_id,  # None: servectl creates a VPC with two public subnets
        "subnet_ids": list(block.subnet_ids),
        "cidr_block": None if block.vpc_id else "10.42.0.0/16",
    }, [])
    lb_sg = add(SECURITY_GROUP, "lb", {
        "description": f"{name}: the load balancer's listener",
        "ingress": [{"protocol": "tcp", "port": block.load_balancer.port, "cidrs": sorted(block.load_balancer.allowed_cidrs)}],
    }, [network])
    cluster_sg = add(SECURITY_GROUP, "cluster", {
        "description": f"{name}: Ray nodes; Ray's ports only between members",
        "ingress": [
            {"protocol": "all", "port": "all", "from_group": "cluster"},  # GCS, dashboard, client, object manager
            # The front proxy, from the load balancer only.
            {"protocol": "tcp", "port": block.proxy_port, "from_group": "lb"},
        ],
    }, [network, lb_sg])
    bucket = code_bucket(block.model_dump())
    role = add(IAM_ROLE, "node", {
        "name": f"{name}-node",
        "code_bucket": bucket,
        "policies": [f"s3:GetObject on {name}/ in the code bucket", f"s3:PutObject on {name}/agents/ (node agents' reports)",
                     f"ssm:GetParameter on {token_parameter_name(name)}", "ec2:DescribeInstances for finding the head"],
    }, [])
    # The cluster's Ray token: a SecureString the nodes read at boot, never in their user data.
    token = add(TOKEN_PARAMETER, "ray_token", {"name": token_parameter_name(name), "type": "SecureString"}, [])
    depends_code: list[str] = []
    if block.code_bucket is None:
        depends_code = [add(CODE_BUCKET, "code", {"bucket": bucket, "versioning": True, "public_access": "blocked"}, [])]
    # The config dir's files as one zip: Ray's runtime_env fetches it from S3 onto every node.
    code = add(CODE_OBJECT, "code", {
        "bucket": bucket, "key": f"{name}/code-{code_sha256[:16]}.zip", "sha256": code_sha256,
    }, depends_code)
    # servectl itself, for the nodes: the node agent runs from it and replicas import its runtime.
    agent = add(CODE_OBJECT, "agent", {
        "bucket": bucket, "key": f"{name}/servectl-{agent_sha256[:16]}.zip", "sha256": agent_sha256,
    }, depends_code)
    target = add(TARGET_GROUP, "serve", {
        "port": block.proxy_port,
        "protocol": "HTTP",
        "health_check": {"path": HEALTH_PATH, "interval_s": 10, "healthy": 2, "unhealthy": 2},
    }, [network])
    sizes = size_node_groups(block, backends)
    for node_type in [block.head, *block.node_types]:
        is_head = node_type is block.head
        label = "head" if is_head else node_type.name
        template = add(LAUNCH_TEMPLATE, label, {
            "instance_type": node_type.instance_type,
            "image_id": block.image_id,
            "role": "head" if is_head else "worker",
            # The head schedules no replicas: GCS, the Serve controller and the dashboard have it to themselves.
            "ray_resources": {"CPU": 0} if is_head else dict(sorted(node_type.resources.items())),
            "ray_version": RAY_VERSION,
            "key_name": block.key_name,
            "agent_key": f"{name}/servectl-{agent_sha256[:16]}.zip",
            "proxy_port": block.proxy_port,
            "serve_port": block.serve_port,
        }, [cluster_sg, role, agent, token])
        group: dict[str, Any]
        if is_head:
            group = {"min_size": 1, "desired_capacity": 1, "max_size": 1, "replicas": {}}
        else:
            group = dict(sizes[node_type.name])
        add(NODE_GROUP, label, {
            "instance_type": node_type.instance_type,
            "node_resources": {} if is_head else dict(sorted(node_type.resources.items())),
            "min_size": group["min_size"],
            "desired_capacity": group["desired_capacity"],
            "max_size": group["max_size"],
            "hourly_price": node_type.hourly_price,
            "launch_template": label,
            "replicas": group["replicas"],
            "target_group": None if is_head else "serve",
        }, [template, code, target])
    lb = add(LOAD_BALANCER, "main", {
        "scheme": "internal" if block.load_balancer.internal else "internet-facing",
        "type": "application",
    }, [network, lb_sg])
    add(LISTENER, "http", {"port": block.load_balancer.port, "protocol": "HTTP", "forward_to": "serve"}, [lb, target])
    return out


def group_cost(attributes: dict[str, Any]) -> Optional[float]:
    """A node group's hourly cost at its desired size; None when its type has no price."""
    price = attributes.get("hourly_price")
    return None if price is None else price * int(attributes.get("desired_capacity") or 0)


# The kinds this provider plans, in creation order (deleted in reverse).
INFRA_KINDS = (
    NETWORK, SECURITY_GROUP, IAM_ROLE, TOKEN_PARAMETER, CODE_BUCKET, CODE_OBJECT, TARGET_GROUP, LAUNCH_TEMPLATE,
    NODE_GROUP, LOAD_BALANCER, LISTENER,
)


def aws_provider_spec(block: AwsRay) -> ProviderSpec:
    """The AWS provider: Serve runs a proxy on every node behind the load balancer's port."""
    return ProviderSpec(
        kind=ProviderKind.AWS_RAY, address=None, http_host="0.0.0.0", http_port=block.load_balancer.port,
        http_location="EveryNode", num_cpus=None, num_gpus=0, resources={}, auth_token_path=None,
        block=block.model_dump(exclude={"declared_at"}),
    )


def check_state_backend(block: AwsRay, state_backend: Optional[StateBackendSpec]) -> None:
    """Refuse a code bucket that is also the S3State bucket (every node reads the code bucket; the state holds the
    cluster's token and every sensitive value). Raises ConfigError."""
    if state_backend is None:
        return
    bucket = code_bucket(block.model_dump())
    if bucket == state_backend.bucket:
        raise ConfigError(
            f"{block.declared_at}: AwsRay: the code bucket {bucket!r} is also the S3State bucket: every node may "
            "read the code bucket, and the state holds the cluster's token and every sensitive value; give "
            "code_bucket (or S3State) another bucket"
        )


def plan_infra(block: AwsRay, backends: list[ResourceSpec], config_dir: str) -> dict[str, ResourceSpec]:
    """Every AWS resource ``block`` asks for, sized for ``backends``, keyed by address (``infra_resources`` with
    the digests of the config dir's shipped files and of servectl's own code, which the nodes' agents run)."""
    return infra_resources(block, backends, shipped_digest(config_dir), bundle_digest(freeze_servectl()))


def _money(amount: float) -> str:
    return f"{'+' if amount >= 0 else '-'}${abs(amount):,.2f}"


def node_group_reasons(kind: str, before: dict[str, Any], after: dict[str, Any], reasons: list[str]) -> list[str]:
    """A node group's reason lines: ``desired 1 → 3 (+2 g5.xlarge, +$2.01/h)`` in nodes and money, in place of the
    bare ``desired_capacity`` line; other kinds' reasons unchanged."""
    if kind != NODE_GROUP:
        return reasons
    old, new = int(before.get("desired_capacity") or 0), int(after.get("desired_capacity") or 0)
    if old == new:
        return reasons
    text = f"desired {old} → {new} ({new - old:+d} {after.get('instance_type')}"
    cost_before, cost_after = group_cost(before), group_cost(after)
    if cost_before is not None and cost_after is not None:
        text += f", {_money(cost_after - cost_before)}/h"
    return [text + ")"] + [r for r in reasons if not r.startswith("desired_capacity ")]


def shrinks(kind: str, before: Optional[dict[str, Any]], after: Optional[dict[str, Any]]) -> bool:
    """Whether an update removes nodes (a node group's desired size goes down): it goes after replicas leave."""
    return kind == NODE_GROUP and int((after or {}).get("desired_capacity") or 0) < int(
        (before or {}).get("desired_capacity") or 0)


def fleet_summary(resources: Iterable[Any]) -> PlacementSummary:
    """The placement summary for node groups: nodes and GPUs per group at their desired sizes, and the cost."""
    groups = [r for r in resources if r.kind == NODE_GROUP]
    size = {g.name: int(g.attributes.get("desired_capacity") or 0) for g in groups}
    priced = [group_cost(g.attributes) for g in groups]
    return {
        "replicas": sum(sum((g.attributes.get("replicas") or {}).values()) for g in groups),
        "nodes_total": sum(size.values()),
        "nodes_used": sum(size[g.name] for g in groups if g.attributes.get("replicas")),
        "gpu_nodes_used": sum(size[g.name] for g in groups if (g.attributes.get("node_resources") or {}).get("GPU", 0) > 0),
        "cpus_used": 0, "cpus_total": 0, "gpus_used": 0, "gpus_total": 0,
        "hourly_cost": None if any(cost is None for cost in priced) else round(sum(priced), 4),  # type: ignore[arg-type]
        "node_groups": {
            g.name: {key: g.attributes.get(key) for key in ("instance_type", "min_size", "desired_capacity", "max_size")}
            for g in groups
        },
        "nodes": [],
    }


PLUGIN = ProviderPlugin(
    kind=ProviderKind.AWS_RAY.value, block=AwsRay, spec=aws_provider_spec, resource_kinds=INFRA_KINDS,
    in_place=IN_PLACE_INFRA_ATTRIBUTES, infra=plan_infra, check=check_state_backend, reasons=node_group_reasons,
    shrinks=shrinks, summary=fleet_summary,
)
register(PLUGIN)

