"""The AWS provider applying its planned AWS resources in plan order on moto_server, change by change."""
from __future__ import annotations

import hashlib

from servectl.engine.apply import _after_change
from servectl.loading.loader import load_config
from servectl.model.plan import Action
from servectl.planning.planner import plan_changes
from servectl.providers.aws import resources as aws
from servectl.providers import provider_for
from servectl.state.document import ResourceState
from tests.conftest import EXAMPLES


def converge_infra(provider, plan, resources: dict[str, ResourceState]) -> None:
    """What apply does, for the AWS resources only: the state after each change, then its live ids."""
    for change in plan.actionable:
        if change.kind in ("backend", "endpoint"):
            continue
        working = _after_change(resources, change)
        live = provider.converge(working, change, 60, lambda _: None)
        for address, ids in live.items():
            working[address].live = ids
        resources.clear()
        resources.update(working)


def test_the_provider_creates_resizes_and_deletes_its_aws_resources(moto_server, tmp_path):
    first = load_config(str(EXAMPLES / "aws"))
    provider = provider_for(first.provider, str(EXAMPLES / "aws"))
    provider.recall({})
    resources: dict[str, ResourceState] = {}
    converge_infra(provider, plan_changes(first, None, [], "projected"), resources)
    ctx = aws.AwsContext(region="us-east-1", cluster="servectl")

    # The code object holds exactly the config files the plan hashed.
    code = resources["aws_s3_object.code"]
    body = ctx.client("s3").get_object(Bucket=code.live["bucket"], Key=code.live["key"])["Body"].read()
    assert hashlib.sha256(body).hexdigest() == code.attributes["sha256"]
    token = provider.token()
    assert len(token) == 64 and provider.recorded["ray_token"] != token  # kept marked sensitive in the state

    # vision 2 → 6 replicas: the GPU group grows 1 → 3 in place, its new instances become targets.
    from tests.test_aws_plan import applied

    state = applied(first)
    for address, resource in resources.items():
        state.resources[address] = resource
    grown = load_config(str(EXAMPLES / "aws"), {"vision_replicas": "6"})
    replan = plan_changes(grown, state, [], "projected")
    assert {c.address: c.action for c in replan.actionable if c.kind == "node_group"} == {
        "node_group.gpu": Action.UPDATE, "node_group.cpu": Action.UPDATE,
    }
    converge_infra(provider, replan, resources)
    gpu = aws.read_node_group(ctx, resources["node_group.gpu"].live)
    assert (gpu["desired_capacity"], len(gpu["instances"])) == (3, 3)
    assert set(gpu["instances"]) <= set(aws.registered_targets(ctx, resources["aws_lb_target_group.serve"].live))

    # Destroy: every AWS resource deleted in reverse order, found by name; nothing tagged is left.
    state.resources = dict(resources)
    teardown = plan_changes(grown, state, [], "projected", destroy=True)
    converge_infra(provider, teardown, resources)
    assert resources == {}
    assert aws.tagged_leftovers(ctx) == {}


def test_drift_reads_hand_resized_groups_and_a_deleted_target_group(moto_server):
    """What `servectl drift` sees of the AWS resources (the Serve half is read as on any cluster)."""
    from servectl.engine import drift

    desired = load_config(str(EXAMPLES / "aws"), {"vision_replicas": "6"})  # gpu group: min = desired = max = 3
    provider = provider_for(desired.provider, str(EXAMPLES / "aws"))
    provider.recall({})
    resources: dict[str, ResourceState] = {}
    converge_infra(provider, plan_changes(desired, None, [], "projected"), resources)
    ctx = aws.AwsContext(region="us-east-1", cluster="servectl")
    from tests.test_aws_plan import applied

    state = applied(desired)
    state.resources = dict(resources)  # the AWS half: backends and endpoints are read from Serve as anywhere
    seen = provider._observe_infra()
    assert seen["node_group.gpu"] == {"min_size": 3, "max_size": 3, "desired_capacity": 3}
    assert drift.detect(state, drift.LiveView({}, [], infra=seen)) == []

    # The cpu group may move between min and max (the head's scaler does): not drift. The fixed gpu group: drift.
    scaling, elbv2 = ctx.client("autoscaling"), ctx.client("elbv2")
    cpu = resources["node_group.cpu"].attributes
    assert cpu["min_size"] < cpu["max_size"]
    scaling.set_desired_capacity(AutoScalingGroupName="servectl-cpu", DesiredCapacity=cpu["max_size"])
    scaling.set_desired_capacity(AutoScalingGroupName="servectl-gpu", DesiredCapacity=1)
    elbv2.delete_listener(ListenerArn=resources["aws_lb_listener.http"].live["arn"])
    elbv2.delete_target_group(TargetGroupArn=resources["aws_lb_target_group.serve"].live["arn"])
    items = {(i.address, i.change, i.path): (i.recorded, i.live)
             for i in drift.detect(state, drift.LiveView({}, [], infra=provider._observe_infra()))}
    assert items == {
        ("node_group.gpu", drift.CHANGED, "desired_capacity"): (3, 1),
        ("aws_lb_target_group.serve", drift.DELETED, None): (None, None),
    }

    teardown = plan_changes(desired, state, [], "projected", destroy=True)
    converge_infra(provider, teardown, resources)
    assert aws.tagged_leftovers(ctx) == {}
