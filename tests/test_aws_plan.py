"""Planning on the AWS provider: node groups sized by packing, AWS resources as plan lines, clear refusals."""
from __future__ import annotations

import pytest

from servectl.providers.aws.infra import NODE_GROUP
from servectl.errors import ConfigError, PlanError
from servectl.loading.loader import load_config
from servectl.model.plan import Action
from servectl.planning.planner import plan_changes
from servectl.render.plan import summary_line
from servectl.state.document import ResourceState, StateDocument
from tests.conftest import EXAMPLES, write_config


def applied(desired) -> StateDocument:
    """A state as if ``desired`` had been applied."""
    document = StateDocument.new()
    document.provider = desired.provider.attributes()
    for address, spec in desired.resources.items():
        document.resources[address] = ResourceState(spec.kind, spec.name, spec.attributes)
    return document


def test_node_groups_follow_the_replicas_with_nodes_and_cost_in_the_plan():
    first = load_config(str(EXAMPLES / "aws"))
    groups = {s.name: s.attributes for s in first.resources.values() if s.kind == NODE_GROUP}
    # vision: 2 × (1 CPU, 0.5 GPU) share one g5; text autoscales 2–12 × 1 CPU and fills the GPU node's spare CPUs.
    assert {n: (g["min_size"], g["desired_capacity"], g["max_size"]) for n, g in groups.items()} == {
        "head": (1, 1, 1), "cpu": (1, 1, 3), "gpu": (1, 1, 1),
    }
    plan = plan_changes(first, None, [], "projected")
    order = [c.address for c in plan.changes]
    assert order.index("node_group.gpu") < order.index("backend.vision") < order.index("endpoint.vision")
    assert order.index("aws_lb.main") < order.index("aws_lb_listener.http")
    line = summary_line(plan)
    assert "nodes: cpu 0 → 1 (autoscaling 1–3), gpu 0 → 1, head 0 → 1" in line
    assert "cost $1.29/h (+$1.29/h)" in line and "GPU nodes +1" in line

    grown = load_config(str(EXAMPLES / "aws"), {"vision_replicas": "6"})
    replan = plan_changes(grown, applied(first), [], "projected")
    changed = {c.address: c for c in replan.actionable}
    assert set(changed) == {"backend.vision", "node_group.gpu", "node_group.cpu"}
    gpu = changed["node_group.gpu"]
    assert gpu.action is Action.UPDATE  # an ASG resizes in place
    assert gpu.reasons[0] == "desired 1 → 3 (+2 g5.xlarge, +$2.01/h)"
    assert "GPU nodes +2" in summary_line(replan) and "(+$2.01/h)" in summary_line(replan)
    order = [c.address for c in replan.actionable]
    assert order.index("node_group.gpu") < order.index("backend.vision")  # nodes come before replicas need them

    # Back to 2: the replicas leave before their nodes go.
    shrunk = plan_changes(first, applied(grown), [], "projected")
    order = [c.address for c in shrunk.actionable]
    assert order.index("backend.vision") < order.index("node_group.gpu")


def test_placements_no_node_group_can_hold_fail_at_plan_time(tmp_path):
    main = (EXAMPLES / "aws" / "main.py").read_text()
    models = (EXAMPLES / "aws" / "models.py").read_text()
    too_big = write_config(tmp_path / "big", main.replace('"num_gpus": 0.5', '"num_gpus": 2'), models=models)
    with pytest.raises(PlanError) as refused:
        load_config(str(too_big))
    assert "backend.vision: a replica needs {CPU 1, GPU 2}, which no node type offers" in str(refused.value)
    assert "gpu: CPU 4, GPU 1" in str(refused.value)

    too_many = write_config(tmp_path / "many", main, models=models)
    with pytest.raises(PlanError) as over:
        load_config(str(too_many), {"vision_replicas": "20"})
    assert str(over.value).startswith("main.py:20: backend.vision: 4 replica(s) needing {CPU 1, GPU 0.5} do not fit")
    assert "at max_workers (gpu 8); raise max_workers or lower the replicas" in str(over.value)


def test_only_the_listener_is_open_and_rays_ports_stay_inside_the_cluster():
    desired = load_config(str(EXAMPLES / "aws"))
    groups = {s.name: s.attributes for s in desired.resources.values() if s.kind == "aws_security_group"}
    assert groups["lb"]["ingress"] == [{"protocol": "tcp", "port": 80, "cidrs": ["203.0.113.0/24"]}]
    for rule in groups["cluster"]["ingress"]:
        assert "cidrs" not in rule  # members and the load balancer only: no address range reaches a Ray port


@pytest.mark.parametrize("settings, message", [
    ("head=NodeType('head', instance_type='m6i.large', resources={'GPU': 1})",
     "NodeType 'head': resources: give the node's CPUs"),
    ("load_balancer=LoadBalancer(allowed_cidrs=['10.0.0.300/8'])", "'10.0.0.300/8' is not a CIDR block"),
    ("node_types=[NodeType('a', instance_type='m6i.xlarge', resources={'CPU': 4}, min_workers=3, max_workers=1)]",
     "max_workers 1 is below min_workers 3"),
    ("vpc_id='vpc-0a1b2c3d'", "give vpc_id and subnet_ids together"),
])
def test_aws_config_mistakes_are_one_line(tmp_path, settings, message):
    base = dict(
        head="head=NodeType('head', instance_type='m6i.large', resources={'CPU': 2})",
        node_types="node_types=[NodeType('cpu', instance_type='m6i.xlarge', resources={'CPU': 4})]",
        load_balancer="load_balancer=LoadBalancer(allowed_cidrs=['0.0.0.0/0'])",
    )
    key = settings.split("=", 1)[0]
    base[key] = settings
    body = ", ".join(["region='us-east-1'", *base.values()])
    config = write_config(tmp_path, f"from servectl import AwsRay, NodeType, LoadBalancer\nAwsRay({body})\n")
    with pytest.raises(ConfigError) as raised:
        load_config(str(config))
    assert message in str(raised.value) and "\n" not in str(raised.value)
