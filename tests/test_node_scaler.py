"""Node groups following demand: the head agent's sizing rules, and the same rules acting on Auto Scaling groups in moto."""
from __future__ import annotations

import itertools
import json

from servectl.loading.loader import load_config
from servectl.node_agent.scaler import Group, Member, NodeScaler, carry_out, members
from servectl.providers.aws import resources as aws
from tests.conftest import EXAMPLES

CPU = Group("cpu", "c-cpu", {"CPU": 4}, min_size=1, max_size=3)
GPU = Group("gpu", "c-gpu", {"CPU": 4, "GPU": 1}, min_size=0, max_size=4)
_clusters = itertools.count()


def serve(targets: dict[str, tuple[int, dict[str, float]]], placed: dict[str, list[str]] = {}) -> dict:
    """Serve's details as the dashboard gives them: target counts, resources per replica, replicas' node IPs."""
    return {"applications": {name: {"deployments": {name: {
        "target_num_replicas": count, "required_resources": needs,
        "replicas": [{"node_ip": ip, "state": "RUNNING"} for ip in placed.get(name, [])],
    }}} for name, (count, needs) in targets.items()}}


def test_pending_gpu_replicas_raise_the_gpu_group_within_its_max():
    scaler = NodeScaler(idle_s=300)
    vision = {"CPU": 0.1, "GPU": 1}
    decision = scaler.decide([CPU, GPU], {"cpu": 1, "gpu": 1}, [], serve({"vision": (3, vision)}), now=0)
    assert decision.raise_to == {"gpu": 3} and decision.terminate == []
    decision = scaler.decide([CPU, GPU], {"cpu": 1, "gpu": 1}, [], serve({"vision": (9, vision)}), now=0)
    assert decision.raise_to == {"gpu": 4}  # never past max_size
    # Half-GPU replicas share nodes; CPU replicas fill the GPU nodes' spare CPUs before a CPU node opens.
    decision = scaler.decide([CPU, GPU], {"cpu": 1, "gpu": 0}, [], serve({
        "vision": (4, {"CPU": 1, "GPU": 0.5}), "text": (4, {"CPU": 1})}), now=0)
    assert decision.raise_to == {"gpu": 2}


def test_only_nodes_idle_for_idle_s_go_and_never_below_min():
    scaler = NodeScaler(idle_s=300)
    nodes = [Member("gpu", "i-1", "10.0.0.1", 1), Member("gpu", "i-2", "10.0.0.2", 0), Member("gpu", "i-3", "10.0.0.3", 0)]
    details = serve({"vision": (1, {"CPU": 0.1, "GPU": 1})}, {"vision": ["10.0.0.1"]})
    assert scaler.decide([GPU], {"gpu": 3}, nodes, details, now=0).terminate == []  # idle from now on
    assert scaler.decide([GPU], {"gpu": 3}, nodes, details, now=299).terminate == []
    gone = scaler.decide([GPU], {"gpu": 3}, nodes, details, now=300).terminate
    assert [m.instance_id for m in gone] == ["i-2", "i-3"]  # the busy node stays
    held = Group("gpu", "c-gpu", {"CPU": 4, "GPU": 1}, min_size=2, max_size=4)
    assert [m.instance_id for m in scaler.decide([held], {"gpu": 3}, nodes, details, now=300).terminate] == ["i-2"]
    # A node that takes a replica again is no longer idle.
    busy = [Member("gpu", "i-2", "10.0.0.2", 1), nodes[0], nodes[2]]
    assert [m.instance_id for m in scaler.decide([GPU], {"gpu": 3}, busy, details, now=600).terminate] == ["i-3"]


def test_the_scaler_resizes_auto_scaling_groups_on_moto(moto_server):
    ctx = aws.AwsContext(region="us-east-1", cluster=f"scale{next(_clusters)}")
    desired = load_config(str(EXAMPLES / "aws"))
    for spec in desired.resources.values():
        if spec.kind not in ("backend", "endpoint"):
            ctx.live[spec.address] = aws.create(ctx, spec.kind, spec.name, spec.attributes, b"PK-zip", "token-123")
    groups = [
        Group.from_document(label, {"asg_name": ctx.name(label), **attrs})
        for label, attrs in (
            (s.name, {"resources": s.attributes["node_resources"], "min_size": s.attributes["min_size"],
                      "max_size": s.attributes["max_size"]})
            for s in desired.resources.values() if s.kind == "node_group" and s.name != "head"
        )
    ]
    asg, ec2 = ctx.client("autoscaling"), ctx.client("ec2")
    assert {g.label: (g.min_size, g.max_size) for g in groups} == {"cpu": (1, 3), "gpu": (1, 1)}
    # Give the GPU group room to follow demand (as a plan with autoscaling vision would).
    asg.update_auto_scaling_group(AutoScalingGroupName=ctx.name("gpu"), MaxSize=3)
    groups = [g if g.label != "gpu" else Group("gpu", g.asg_name, g.resources, 1, 3) for g in groups]

    # Serve's autoscaler raised vision to 6 half-GPU replicas: three g5 nodes.
    scaler = NodeScaler(idle_s=0)
    sizes, running = members(asg, ec2, groups, {})
    assert sizes == {"cpu": 1, "gpu": 1} and len(running) == 2
    done = carry_out(asg, groups, scaler.decide(groups, sizes, running, serve({
        "vision": (6, {"CPU": 1, "GPU": 0.5}), "text": (2, {"CPU": 1})})))
    assert done == ["node_group.gpu: desired → 3"]
    gpu = aws.read_node_group(ctx, {"asg_name": ctx.name("gpu")})
    assert (gpu["min_size"], gpu["desired_capacity"], gpu["max_size"], len(gpu["instances"])) == (1, 3, 3, 3)
    assert set(gpu["instances"]) <= set(aws.registered_targets(ctx, ctx.live["aws_lb_target_group.serve"]))

    # Demand falls back to 2 replicas, all on one GPU node: the two idle ones are terminated, the busy one stays.
    sizes, running = members(asg, ec2, groups, {})
    busy = next(m for m in running if m.group == "gpu")
    sizes, running = members(asg, ec2, groups, {busy.ip: 2})
    done = carry_out(asg, groups, scaler.decide(groups, sizes, running, serve(
        {"vision": (2, {"CPU": 1, "GPU": 0.5})}, {"vision": [busy.ip, busy.ip]})))
    assert len(done) == 2 and all("terminated idle" in line for line in done) and busy.instance_id not in " ".join(done)
    gpu = aws.read_node_group(ctx, {"asg_name": ctx.name("gpu")})
    assert gpu["desired_capacity"] == 1 and busy.instance_id in gpu["instances"]

    # The nodes may do exactly this and no more: resize and terminate in their own cluster's groups.
    role = ctx.client("iam").get_role_policy(RoleName=ctx.live["aws_iam_role.node"]["role_name"],
                                             PolicyName="servectl-node")["PolicyDocument"]
    role = role if isinstance(role, dict) else json.loads(role)
    scaling = [s for s in role["Statement"] if "autoscaling:SetDesiredCapacity" in s["Action"]]
    assert scaling and scaling[0]["Condition"] == {
        "StringEquals": {"autoscaling:ResourceTag/servectl:cluster": ctx.cluster}
    }
    for spec in reversed([s for s in desired.resources.values() if s.kind not in ("backend", "endpoint")]):
        aws.delete(ctx, spec.kind, ctx.live[spec.address])
    assert aws.tagged_leftovers(ctx) == {}
