"""Create, change, read and delete the AWS resources ``servectl.providers.aws.infra`` plans, with boto3.

One function per kind and verb, each taking the resource's planned attributes
and the live identifiers of what it depends on, returning its own live
identifiers (ids, ARNs) for the state. Everything carries the tags
``servectl:cluster`` and ``Name``, so a user can find (and a test can prove
gone) every resource servectl made. boto3 honours ``AWS_ENDPOINT_URL``: the
tests point it at moto_server and nothing else.
"""
from __future__ import annotations

import base64
import json
import math
import shlex
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from servectl import names
from servectl.providers.aws.infra import token_parameter_name
from servectl.errors import ProviderError

TAG = "servectl:cluster"
AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
EC2_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}

Live = dict[str, Any]


@dataclass
class AwsContext:
    """What every call needs: the region's clients, the cluster's name, and the live ids of resources made so far."""

    region: str
    cluster: str
    live: dict[str, Live] = field(default_factory=dict)  # address -> live identifiers
    _clients: dict[str, Any] = field(default_factory=dict)

    def client(self, service: str) -> Any:
        """The boto3 client for ``service`` in this region, made once (5 s connect and 60 s read timeouts, 3 tries)."""
        if service not in self._clients:
            import boto3
            from botocore.config import Config

            self._clients[service] = boto3.session.Session().client(
                service, region_name=self.region,
                config=Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"}),
            )
        return self._clients[service]

    def name(self, label: str) -> str:
        """The AWS name of the cluster's resource ``label``: ``<cluster>-<label>``."""
        return f"{self.cluster}-{label}"

    def tags(self, label: str) -> list[dict[str, str]]:
        """The tags every resource carries, in EC2's list form: ``servectl:cluster`` and ``Name`` (``name(label)``)."""
        return [{"Key": TAG, "Value": self.cluster}, {"Key": "Name", "Value": self.name(label)}]

    def of(self, address: str, key: str) -> Any:
        """The live identifier ``key`` of the resource at ``address``; raises ProviderError when the state has none."""
        try:
            return self.live[address][key]
        except KeyError:
            raise ProviderError(f"{address} has no live {key} in the state; run apply again to create it") from None


def call(what: str, operation: Callable[..., Any], **params: Any) -> Any:
    """One AWS call; its failure is one ProviderError line naming what was being done."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return operation(**params)
    except ClientError as err:
        error = err.response.get("Error", {})
        raise ProviderError(f"cannot {what}: {error.get('Code')}: {error.get('Message')}") from None
    except BotoCoreError as err:
        raise ProviderError(f"cannot {what}: {err}") from None


def _gone(operation: Callable[..., Any], missing: tuple[str, ...], **params: Any) -> None:
    """Delete something, treating "already gone" as done (a retried destroy must converge)."""
    from botocore.exceptions import ClientError

    try:
        operation(**params)
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        if not any(code.startswith(m) for m in missing):
            raise ProviderError(f"cannot delete: {code}: {err.response.get('Error', {}).get('Message')}") from None


# --- network ------------------------------------------------------------------------------------------------------

def create_network(ctx: AwsContext, attrs: dict[str, Any]) -> Live:
    """The VPC: the given ``vpc_id`` and ``subnet_ids`` as they are (``owned`` False), or a new one servectl owns.

    A new VPC gets DNS host names, an internet gateway, a route table with a default route to it, and one public
    /24 subnet in each of the first two available zones (a load balancer needs two). Returns ``vpc_id``,
    ``subnet_ids`` and ``owned``, plus ``igw_id``, ``route_table_id`` and ``associations`` for an owned VPC.
    Raises ProviderError when a call fails.
    """
    if attrs.get("vpc_id"):
        return {"vpc_id": attrs["vpc_id"], "subnet_ids": list(attrs["subnet_ids"]), "owned": False}
    ec2 = ctx.client("ec2")
    vpc = call("create the VPC", ec2.create_vpc, CidrBlock=attrs["cidr_block"],
               TagSpecifications=[{"ResourceType": "vpc", "Tags": ctx.tags("vpc")}])["Vpc"]["VpcId"]
    live: Live = {"vpc_id": vpc, "owned": True, "subnet_ids": []}
    call("enable DNS names", ec2.modify_vpc_attribute, VpcId=vpc, EnableDnsHostnames={"Value": True})
    igw = call("create the internet gateway", ec2.create_internet_gateway,
               TagSpecifications=[{"ResourceType": "internet-gateway", "Tags": ctx.tags("igw")}])
    live["igw_id"] = igw["InternetGateway"]["InternetGatewayId"]
    call("attach the internet gateway", ec2.attach_internet_gateway, InternetGatewayId=live["igw_id"], VpcId=vpc)
    table = call("create the route table", ec2.create_route_table, VpcId=vpc,
                 TagSpecifications=[{"ResourceType": "route-table", "Tags": ctx.tags("routes")}])
    live["route_table_id"] = table["RouteTable"]["RouteTableId"]
    call("route to the internet", ec2.create_route, RouteTableId=live["route_table_id"],
         DestinationCidrBlock="0.0.0.0/0", GatewayId=live["igw_id"])
    zones = [z["ZoneName"] for z in call("list availability zones", ec2.describe_availability_zones)["AvailabilityZones"]
             if z.get("State", "available") == "available"][:2]
    base = attrs["cidr_block"].split(".")
    for index, zone in enumerate(zones):  # a load balancer needs subnets in two zones
        subnet = call("create a subnet", ec2.create_subnet, VpcId=vpc, AvailabilityZone=zone,
                      CidrBlock=f"{base[0]}.{base[1]}.{index}.0/24",
                      TagSpecifications=[{"ResourceType": "subnet", "Tags": ctx.tags(f"subnet-{zone}")}])
        subnet_id = subnet["Subnet"]["SubnetId"]
        call("give the subnet public addresses", ec2.modify_subnet_attribute, SubnetId=subnet_id,
             MapPublicIpOnLaunch={"Value": True})
        association = call("route the subnet", ec2.associate_route_table, RouteTableId=live["route_table_id"],
                           SubnetId=subnet_id)
        live["subnet_ids"].append(subnet_id)
        live.setdefault("associations", []).append(association["AssociationId"])
    return live


def delete_network(ctx: AwsContext, live: Live) -> None:
    """Delete an owned VPC and what create_network made in it (route table associations, subnets, route table, gateway).

    A VPC servectl was given is left alone. Parts already gone count as deleted; any other failure raises
    ProviderError.
    """
    if not live.get("owned"):
        return
    ec2 = ctx.client("ec2")
    for association in live.get("associations", []):
        _gone(ec2.disassociate_route_table, ("InvalidAssociationID.NotFound",), AssociationId=association)
    for subnet in live.get("subnet_ids", []):
        _gone(ec2.delete_subnet, ("InvalidSubnetID.NotFound",), SubnetId=subnet)
    if live.get("route_table_id"):
        _gone(ec2.delete_route_table, ("InvalidRouteTableID.NotFound",), RouteTableId=live["route_table_id"])
    if live.get("igw_id"):
        _gone(ec2.detach_internet_gateway, ("Gateway.NotAttached", "InvalidInternetGatewayID.NotFound"),
              InternetGatewayId=live["igw_id"], VpcId=live["vpc_id"])
        _gone(ec2.delete_internet_gateway, ("InvalidInternetGatewayID.NotFound",), InternetGatewayId=live["igw_id"])
    _gone(ec2.delete_vpc, ("InvalidVpcID.NotFound",), VpcId=live["vpc_id"])


# --- security groups ------------------------------------------------------------------------------------------------

def _permissions(ctx: AwsContext, rules: list[dict[str, Any]], own_id: str) -> list[dict[str, Any]]:
    out = []
    for rule in rules:
        permission: dict[str, Any] = {"IpProtocol": "-1" if rule["protocol"] == "all" else rule["protocol"]}
        if rule["port"] != "all":
            permission["FromPort"] = permission["ToPort"] = int(rule["port"])
        if "cidrs" in rule:
            permission["IpRanges"] = [{"CidrIp": cidr} for cidr in rule["cidrs"]]
        else:
            source = own_id if rule["from_group"] == "cluster" and own_id else ctx.of(
                f"aws_security_group.{rule['from_group']}", "group_id")
            permission["UserIdGroupPairs"] = [{"GroupId": source}]
        out.append(permission)
    return out


def create_security_group(ctx: AwsContext, label: str, attrs: dict[str, Any]) -> Live:
    """Security group ``label`` in the cluster's VPC, opened to the planned ``ingress`` rules.

    Each rule has ``protocol``, ``port`` (or "all") and either ``cidrs`` or ``from_group`` (another group's label;
    "cluster" on the cluster group means itself). Returns ``{"group_id"}``. Raises ProviderError when a call fails
    or the VPC or a source group has no live id in the state.
    """
    ec2 = ctx.client("ec2")
    group = call(f"create security group {label}", ec2.create_security_group, GroupName=ctx.name(label),
                 Description=attrs["description"], VpcId=ctx.of("aws_network.main", "vpc_id"),
                 TagSpecifications=[{"ResourceType": "security-group", "Tags": ctx.tags(label)}])["GroupId"]
    own = group if label == "cluster" else ""
    call(f"open security group {label}", ec2.authorize_security_group_ingress, GroupId=group,
         IpPermissions=_permissions(ctx, attrs["ingress"], own))
    return {"group_id": group}


def update_security_group(ctx: AwsContext, label: str, attrs: dict[str, Any], live: Live) -> Live:
    """Replace the group's ingress with exactly the planned rules."""
    ec2 = ctx.client("ec2")
    current = call("read a security group", ec2.describe_security_groups, GroupIds=[live["group_id"]])
    permissions = current["SecurityGroups"][0].get("IpPermissions", [])
    if permissions:
        call("close old rules", ec2.revoke_security_group_ingress, GroupId=live["group_id"], IpPermissions=permissions)
    own = live["group_id"] if label == "cluster" else ""
    call(f"open security group {label}", ec2.authorize_security_group_ingress, GroupId=live["group_id"],
         IpPermissions=_permissions(ctx, attrs["ingress"], own))
    return live


def delete_security_group(ctx: AwsContext, live: Live) -> None:
    """Revoke the group's ingress rules, then delete it (a group another still references cannot go otherwise).

    A group or rule already gone counts as deleted; any other failure of a revoke or the delete raises ProviderError.
    """
    ec2 = ctx.client("ec2")
    # A group that another still references cannot go: drop its rules first.
    current = ec2.describe_security_groups(Filters=[{"Name": "group-id", "Values": [live["group_id"]]}])
    for group in current.get("SecurityGroups", []):
        if group.get("IpPermissions"):
            _gone(ec2.revoke_security_group_ingress, ("InvalidGroup.NotFound", "InvalidPermission.NotFound"),
                  GroupId=live["group_id"], IpPermissions=group["IpPermissions"])
    _gone(ec2.delete_security_group, ("InvalidGroup.NotFound",), GroupId=live["group_id"])


# --- IAM --------------------------------------------------------------------------------------------------------------

def create_iam_role(ctx: AwsContext, attrs: dict[str, Any], bucket: str) -> Live:
    """The nodes' role: read this cluster's objects and token, report routing, find the head, size its own groups."""
    iam = ctx.client("iam")
    name = attrs["name"]
    names.require(names.BUCKET, bucket, "code bucket")
    parameter = token_parameter_name(ctx.cluster)
    call("create the nodes' IAM role", iam.create_role, RoleName=name, AssumeRolePolicyDocument=json.dumps(EC2_TRUST),
         Tags=ctx.tags("node-role"))
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            # This cluster's objects only (code zips, servectl's zip, the routing document): a bucket shared with
            # other clusters or data stays out of the nodes' reach.
            {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": [f"arn:aws:s3:::{bucket}/{ctx.cluster}/*"]},
            # The cluster's Ray token, read at boot (a SecureString under the account's aws/ssm key).
            {"Effect": "Allow", "Action": ["ssm:GetParameter"],
             "Resource": [f"arn:aws:ssm:{ctx.region}:*:parameter{parameter}"]},
            # The node agents' reports of the routing version they serve; nothing else is writable.
            {"Effect": "Allow", "Action": ["s3:PutObject"], "Resource": [f"arn:aws:s3:::{bucket}/{ctx.cluster}/agents/*"]},
            {"Effect": "Allow", "Action": ["ec2:DescribeInstances", "ec2:DescribeTags",
                                           "autoscaling:DescribeAutoScalingGroups"], "Resource": "*"},
            # The head's node scaler (servectl.node_agent.scaler): only this cluster's groups.
            {"Effect": "Allow",
             "Action": ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"],
             "Resource": "*",
             "Condition": {"StringEquals": {"autoscaling:ResourceTag/servectl:cluster": ctx.cluster}}},
        ],
    }
    call("give the role its policy", iam.put_role_policy, RoleName=name, PolicyName="servectl-node",
         PolicyDocument=json.dumps(policy))
    profile = call("create the instance profile", iam.create_instance_profile, InstanceProfileName=name)
    call("put the role in the profile", iam.add_role_to_instance_profile, InstanceProfileName=name, RoleName=name)
    return {"role_name": name, "instance_profile_arn": profile["InstanceProfile"]["Arn"]}


def delete_iam_role(ctx: AwsContext, live: Live) -> None:
    """Take the role out of its instance profile, then delete the profile, the ``servectl-node`` policy and the role;
    parts already gone (NoSuchEntity) count as deleted, any other failure raises ProviderError.
    """
    iam = ctx.client("iam")
    name = live["role_name"]
    _gone(iam.remove_role_from_instance_profile, ("NoSuchEntity",), InstanceProfileName=name, RoleName=name)
    _gone(iam.delete_instance_profile, ("NoSuchEntity",), InstanceProfileName=name)
    _gone(iam.delete_role_policy, ("NoSuchEntity",), RoleName=name, PolicyName="servectl-node")
    _gone(iam.delete_role, ("NoSuchEntity",), RoleName=name)


# --- the cluster's token -------------------------------------------------------------------------------------------

def put_token(ctx: AwsContext, attrs: dict[str, Any], token: str) -> Live:
    """The Ray token as a SecureString parameter (encrypted at rest; readable only by who may decrypt it)."""
    name = token_parameter_name(ctx.cluster)  # the name the nodes' role and boot script are given
    call("keep the cluster's token in SSM", ctx.client("ssm").put_parameter, Name=name, Value=token,
         Type="SecureString", Overwrite=True, Description=f"servectl: Ray auth token of cluster {ctx.cluster}")
    return {"name": name}


def delete_token(ctx: AwsContext, live: Live) -> None:
    """Delete the cluster's token parameter from SSM; one already gone counts as deleted, else ProviderError."""
    _gone(ctx.client("ssm").delete_parameter, ("ParameterNotFound",), Name=live["name"])


# --- code --------------------------------------------------------------------------------------------------------------

def create_bucket(ctx: AwsContext, attrs: dict[str, Any]) -> Live:
    """The code bucket ``attrs["bucket"]`` in this region, with versioning on and all public access blocked.

    Returns ``{"bucket"}``; raises ProviderError when a call fails.
    """
    s3 = ctx.client("s3")
    params: dict[str, Any] = {"Bucket": attrs["bucket"]}
    if ctx.region != "us-east-1":
        params["CreateBucketConfiguration"] = {"LocationConstraint": ctx.region}
    call("create the code bucket", s3.create_bucket, **params)
    call("keep versions", s3.put_bucket_versioning, Bucket=attrs["bucket"],
         VersioningConfiguration={"Status": "Enabled"})
    call("block public access", s3.put_public_access_block, Bucket=attrs["bucket"], PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True,
    })
    return {"bucket": attrs["bucket"]}


def delete_bucket(ctx: AwsContext, live: Live) -> None:
    """Empty the bucket (every object version and delete marker, 1,000 a call), then delete it.

    A bucket that cannot be listed is taken as already gone. Raises ProviderError when emptying or deleting fails.
    """
    s3 = ctx.client("s3")
    from botocore.exceptions import ClientError

    try:
        pages = list(s3.get_paginator("list_object_versions").paginate(Bucket=live["bucket"]))
    except ClientError:
        return  # already gone
    doomed = [{"Key": v["Key"], "VersionId": v["VersionId"]}
              for page in pages for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
    for start in range(0, len(doomed), 1000):  # DeleteObjects takes at most 1,000 keys a call
        call("empty the code bucket", s3.delete_objects, Bucket=live["bucket"],
             Delete={"Objects": doomed[start:start + 1000], "Quiet": True})
    _gone(s3.delete_bucket, ("NoSuchBucket",), Bucket=live["bucket"])


def put_code(ctx: AwsContext, attrs: dict[str, Any], zipped: bytes) -> Live:
    """Upload the zip ``zipped`` to ``attrs["bucket"]`` under ``attrs["key"]``, encrypted at rest (SSE-S3).

    Returns ``uri`` (``s3://bucket/key``), ``bucket`` and ``key``; raises ProviderError when the upload fails.
    """
    s3 = ctx.client("s3")
    call("upload the code", s3.put_object, Bucket=attrs["bucket"], Key=attrs["key"], Body=zipped,
         ServerSideEncryption="AES256")
    return {"uri": f"s3://{attrs['bucket']}/{attrs['key']}", "bucket": attrs["bucket"], "key": attrs["key"]}


def delete_code(ctx: AwsContext, live: Live) -> None:
    """Delete the zip and the earlier ones of its kind (a replace keeps them while backends may still run from them)."""
    s3 = ctx.client("s3")
    from botocore.exceptions import ClientError

    family = live["key"].rsplit("-", 1)[0] + "-"  # <cluster>/code- or <cluster>/servectl-
    try:
        pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket=live["bucket"], Prefix=family))
    except ClientError:
        return  # the bucket is gone
    for item in (item for page in pages for item in page.get("Contents", [])):
        _gone(s3.delete_object, ("NoSuchKey", "NoSuchBucket"), Bucket=live["bucket"], Key=item["Key"])


# --- nodes -------------------------------------------------------------------------------------------------------------

def image_id(ctx: AwsContext, attrs: dict[str, Any]) -> str:
    """The AMI nodes boot: ``attrs["image_id"]`` when given, else the latest Amazon Linux 2023 (x86_64) from SSM's
    public parameter. Raises ProviderError when the lookup fails.
    """
    if attrs.get("image_id"):
        return str(attrs["image_id"])
    found = call("look up Amazon Linux 2023's AMI", ctx.client("ssm").get_parameter, Name=AMI_PARAMETER)
    return str(found["Parameter"]["Value"])


UNIT = """[Unit]
Description={description}
After=network-online.target{after}
Wants=network-online.target

[Service]
ExecStart={exec_start}
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
"""
# What both start scripts do first: Ray's token from SSM (into a 0600 file), servectl's zip, this node's address.
SCRIPT_HEAD = """#!/bin/bash
set -euo pipefail
umask 077
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=/etc/ray/token PYTHONPATH=/opt/servectl/servectl.zip
aws ssm get-parameter --region {region} --name {parameter} --with-decryption --query Parameter.Value --output text > /etc/ray/token.new
mv /etc/ray/token.new /etc/ray/token
aws s3 cp --region {region} {agent_uri} /opt/servectl/servectl.zip
IMDS=$(curl -s -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' http://169.254.169.254/latest/api/token)
NODE_IP=$(curl -s -H "X-aws-ec2-metadata-token: $IMDS" http://169.254.169.254/latest/meta-data/local-ipv4)
"""


def _port(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ValueError(f"{what} {value!r} is not a port number")
    return value


def _amount(value: Any, what: str) -> float:
    number = float(value)
    if not math.isfinite(number) or not 0 <= number <= 1_000_000:
        raise ValueError(f"resource {what!r}: {value!r} is not an amount between 0 and 1000000")
    return number


def _count(value: Any, what: str) -> int:
    number = float(value)
    if not number.is_integer() or not 0 <= number <= 100_000:
        raise ValueError(f"{what} {value!r} is not a whole count")
    return int(number)


def user_data(ctx: AwsContext, label: str, attrs: dict[str, Any]) -> str:
    """The boot script: install Ray and servectl, then run Ray and the node agent as systemd services.

    Nothing secret is in it (it is readable with ec2:DescribeLaunchTemplateVersions): the cluster's Ray token
    is read from SSM Parameter Store by the node's role, at every start of Ray. Every value that goes in is
    checked by the config language's rules (``servectl.names``) and quoted with ``shlex.quote``, never formatted
    in. The services restart on failure and after a reboot; a worker looks the head up by its tags at every
    start, so it finds a replaced head. Raises ValueError for a value that breaks a rule.
    """
    q = shlex.quote
    region = names.require(names.REGION, ctx.region, "region")
    cluster = names.require(names.CLUSTER_NAME, ctx.cluster, "cluster name")
    bucket = names.require(names.BUCKET, ctx.of("aws_s3_object.agent", "bucket"), "code bucket")
    agent_key = names.require(names.OBJECT_KEY, attrs["agent_key"], "servectl's object key")
    ray_version = names.require(names.RAY_VERSION, attrs["ray_version"], "Ray version")
    proxy_port = _port(attrs["proxy_port"], "proxy_port")
    custom = {names.require(names.RESOURCE, key, "resource name"): _amount(amount, key)
              for key, amount in attrs["ray_resources"].items() if key not in ("CPU", "GPU")}
    cpus = _count(attrs["ray_resources"].get("CPU", 0), "CPU count")
    gpus = _count(attrs["ray_resources"].get("GPU", 0), "GPU count")
    is_head = attrs["role"] == "head"
    head = SCRIPT_HEAD.format(region=q(region), parameter=q(token_parameter_name(cluster)),
                              agent_uri=q(f"s3://{bucket}/{agent_key}"))
    if is_head:
        ray = head + (
            f'exec ray start --head --block --node-ip-address "$NODE_IP" --port 6379 --dashboard-host 0.0.0.0 '
            f"--num-cpus {cpus} --num-gpus {gpus}\n"
        )
    else:
        find_head = (
            f"aws ec2 describe-instances --region {q(region)} --filters "
            f"{q(f'Name=tag:{TAG},Values={cluster}')} Name=tag:servectl:role,Values=head "
            "Name=instance-state-name,Values=running --query 'Reservations[0].Instances[0].PrivateIpAddress' --output text"
        )
        ray = head + (
            f'until HEAD=$({find_head}) && [ "$HEAD" != None ]; do sleep 5; done\n'
            f'exec ray start --block --address "$HEAD:6379" --node-ip-address "$NODE_IP" --num-cpus {cpus} '
            f"--num-gpus {gpus} --resources {q(json.dumps(custom, sort_keys=True))}\n"
        )
    agent = head + (
        f"exec python3.11 -m servectl.node_agent --region {q(region)} --bucket {q(bucket)} --cluster {q(cluster)} "
        f'--node-ip "$NODE_IP" --listen {q(f"0.0.0.0:{proxy_port}")}'
        + (' --ray-address "$NODE_IP:6379" --scale' if is_head else "") + "\n"
    )
    files = {
        "/opt/servectl/start-ray.sh": ray,
        "/opt/servectl/start-agent.sh": agent,
        "/etc/systemd/system/servectl-ray.service": UNIT.format(
            description="servectl: Ray node", after="", exec_start="/opt/servectl/start-ray.sh"),
        "/etc/systemd/system/servectl-agent.service": UNIT.format(
            description="servectl: node agent (front proxy)", after=" servectl-ray.service",
            exec_start="/opt/servectl/start-agent.sh"),
    }
    script = [
        "#!/bin/bash",
        "set -euo pipefail",
        "dnf install -y python3.11 python3.11-pip awscli",
        f"python3.11 -m pip install {q(f'ray[serve,default]=={ray_version}')} 'smart_open[s3]' boto3 'cryptography>=42,<49'",
        "umask 077",
        "mkdir -p /etc/ray /opt/servectl /var/lib/servectl",
    ]
    for path, content in files.items():
        script.append(f"cat > {q(path)} <<'SERVECTL_FILE'\n{content.rstrip()}\nSERVECTL_FILE")
    script += [
        "chmod 0700 /opt/servectl/start-ray.sh /opt/servectl/start-agent.sh",
        "chmod 0644 /etc/systemd/system/servectl-ray.service /etc/systemd/system/servectl-agent.service",
        "systemctl daemon-reload",
        "systemctl enable --now servectl-ray.service servectl-agent.service",
    ]
    return "\n".join(script) + "\n"


def _template_data(ctx: AwsContext, label: str, attrs: dict[str, Any]) -> dict[str, Any]:
    """A launch template's data: image, type, role, the cluster's security group, the boot script (no token in it)."""
    data: dict[str, Any] = {
        "ImageId": image_id(ctx, attrs),
        "InstanceType": attrs["instance_type"],
        "IamInstanceProfile": {"Arn": ctx.of("aws_iam_role.node", "instance_profile_arn")},
        "SecurityGroupIds": [ctx.of("aws_security_group.cluster", "group_id")],
        "UserData": base64.b64encode(_boot_script(ctx, label, attrs).encode()).decode(),
        "MetadataOptions": {"HttpTokens": "required"},
        "TagSpecifications": [{"ResourceType": "instance", "Tags": ctx.tags(label) + [
            {"Key": "servectl:role", "Value": attrs["role"]}]}],
    }
    if attrs.get("key_name"):
        data["KeyName"] = attrs["key_name"]
    return data


def _boot_script(ctx: AwsContext, label: str, attrs: dict[str, Any]) -> str:
    try:
        return user_data(ctx, label, attrs)
    except ValueError as err:
        raise ProviderError(f"aws_launch_template.{label}: {err}; nothing was sent to AWS") from None


def create_launch_template(ctx: AwsContext, label: str, attrs: dict[str, Any]) -> Live:
    """Launch template ``label``: image, instance type, node role, cluster security group, boot script, IMDSv2 only.

    Returns ``launch_template_id`` and the ``image_id`` it boots. Raises ProviderError when a value of the boot
    script breaks a rule (before any call) or the call fails.
    """
    ec2 = ctx.client("ec2")
    data = _template_data(ctx, label, attrs)
    made = call(f"create launch template {label}", ec2.create_launch_template, LaunchTemplateName=ctx.name(label),
                LaunchTemplateData=data, TagSpecifications=[{"ResourceType": "launch-template", "Tags": ctx.tags(label)}])
    return {"launch_template_id": made["LaunchTemplate"]["LaunchTemplateId"], "image_id": data["ImageId"]}


def update_launch_template(ctx: AwsContext, label: str, attrs: dict[str, Any], live: Live) -> Live:
    """A new version, made the default: the node group launches ``$Latest``, so every node from now on boots with it."""
    ec2 = ctx.client("ec2")
    data = _template_data(ctx, label, attrs)
    made = call(f"add a version to launch template {label}", ec2.create_launch_template_version,
                LaunchTemplateId=live["launch_template_id"], LaunchTemplateData=data)
    version = made["LaunchTemplateVersion"]["VersionNumber"]
    call(f"make version {version} of launch template {label} the default", ec2.modify_launch_template,
         LaunchTemplateId=live["launch_template_id"], DefaultVersion=str(version))
    return {**live, "image_id": data["ImageId"], "version": version}


def delete_launch_template(ctx: AwsContext, live: Live) -> None:
    """Delete the launch template; one already gone counts as deleted, other failures raise ProviderError."""
    _gone(ctx.client("ec2").delete_launch_template, ("InvalidLaunchTemplateId",),
          LaunchTemplateId=live["launch_template_id"])


def create_node_group(ctx: AwsContext, label: str, attrs: dict[str, Any]) -> Live:
    """Auto Scaling group ``label``, launching ``$Latest`` of launch template ``label`` across the network's subnets.

    Sized by ``min_size``, ``max_size`` and ``desired_capacity``; its tags propagate to the instances, and it
    registers them with target group ``attrs["target_group"]`` when one is named. Returns ``{"asg_name"}``;
    raises ProviderError when the call fails or something it depends on has no live id.
    """
    autoscaling = ctx.client("autoscaling")
    name = ctx.name(label)
    params: dict[str, Any] = dict(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateId": ctx.of(f"aws_launch_template.{label}", "launch_template_id"),
                        "Version": "$Latest"},
        MinSize=attrs["min_size"], MaxSize=attrs["max_size"], DesiredCapacity=attrs["desired_capacity"],
        VPCZoneIdentifier=",".join(ctx.of("aws_network.main", "subnet_ids")),
        Tags=[{**tag, "PropagateAtLaunch": True} for tag in ctx.tags(label)],
        HealthCheckType="EC2",
    )
    if attrs.get("target_group"):
        params["TargetGroupARNs"] = [ctx.of(f"aws_lb_target_group.{attrs['target_group']}", "arn")]
    call(f"create Auto Scaling group {label}", autoscaling.create_auto_scaling_group, **params)
    return {"asg_name": name}


def update_node_group(ctx: AwsContext, attrs: dict[str, Any], live: Live) -> Live:
    """New min/max/desired sizes. Nodes the head's scaler added for demand stay (within the new max):
    the scaler removes them once idle, apply never takes them from under running replicas."""
    current = read_node_group(ctx, live)
    desired = max(attrs["desired_capacity"], int((current or {}).get("desired_capacity") or 0))
    desired = min(attrs["max_size"], max(attrs["min_size"], desired))
    call("resize an Auto Scaling group", ctx.client("autoscaling").update_auto_scaling_group,
         AutoScalingGroupName=live["asg_name"], MinSize=attrs["min_size"], MaxSize=attrs["max_size"],
         DesiredCapacity=desired)
    return live


def read_node_group(ctx: AwsContext, live: Live) -> Optional[dict[str, Any]]:
    """The group as AWS has it now: ``min_size``, ``max_size``, ``desired_capacity`` and sorted ``instances`` (ids);
    None when it does not exist. Raises ProviderError when the call fails.
    """
    found = call("read an Auto Scaling group", ctx.client("autoscaling").describe_auto_scaling_groups,
                 AutoScalingGroupNames=[live["asg_name"]])["AutoScalingGroups"]
    if not found:
        return None
    group = found[0]
    return {"min_size": group["MinSize"], "max_size": group["MaxSize"], "desired_capacity": group["DesiredCapacity"],
            "instances": sorted(i["InstanceId"] for i in group.get("Instances", []))}


def delete_node_group(ctx: AwsContext, live: Live, timeout_s: float = 300.0) -> None:
    """Force-delete the Auto Scaling group (its instances with it); wait up to ``timeout_s`` seconds until it is gone.

    A group whose target group was deleted by hand is detached from it first. A group already gone counts as
    deleted. Raises ProviderError when the delete fails or the group still exists after ``timeout_s``.
    """
    autoscaling = ctx.client("autoscaling")
    from botocore.exceptions import ClientError

    try:
        _gone(autoscaling.delete_auto_scaling_group, ("ValidationError",), AutoScalingGroupName=live["asg_name"],
              ForceDelete=True)
    except ProviderError as err:
        if "TargetGroupNotFound" not in str(err):
            raise
        # Its target group was deleted by hand (drift): let go of it, then delete the group.
        found = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[live["asg_name"]])["AutoScalingGroups"]
        attached = found[0].get("TargetGroupARNs", []) if found else []
        for arn in attached:
            try:
                autoscaling.detach_load_balancer_target_groups(AutoScalingGroupName=live["asg_name"], TargetGroupARNs=[arn])
            except ClientError:
                pass
        _gone(autoscaling.delete_auto_scaling_group, ("ValidationError",), AutoScalingGroupName=live["asg_name"],
              ForceDelete=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # its instances terminate first; the launch template waits for that
        left = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[live["asg_name"]])["AutoScalingGroups"]
        if not left:
            return
        time.sleep(2)
    raise ProviderError(f"Auto Scaling group {live['asg_name']} still exists after {timeout_s:.0f}s")


# --- load balancer ---------------------------------------------------------------------------------------------------

def create_target_group(ctx: AwsContext, attrs: dict[str, Any]) -> Live:
    """The target group the nodes register with (instance targets, named ``<cluster>-serve`` cut to 32 characters).

    Takes the planned ``protocol``, ``port`` and ``health_check`` (``path``, ``interval_s`` in seconds, ``healthy``
    and ``unhealthy`` threshold counts). Returns ``{"arn"}``; raises ProviderError when the call fails.
    """
    check = attrs["health_check"]
    made = call("create the target group", ctx.client("elbv2").create_target_group,
                Name=ctx.name("serve")[:32], Protocol=attrs["protocol"], Port=attrs["port"],
                VpcId=ctx.of("aws_network.main", "vpc_id"), TargetType="instance",
                HealthCheckPath=check["path"], HealthCheckIntervalSeconds=check["interval_s"],
                HealthyThresholdCount=check["healthy"], UnhealthyThresholdCount=check["unhealthy"],
                Tags=ctx.tags("serve"))
    return {"arn": made["TargetGroups"][0]["TargetGroupArn"]}


def registered_targets(ctx: AwsContext, live: Live) -> list[str]:
    """The instance ids registered with the target group, sorted, whatever their health; ProviderError on failure."""
    health = call("read the target group", ctx.client("elbv2").describe_target_health, TargetGroupArn=live["arn"])
    return sorted(t["Target"]["Id"] for t in health["TargetHealthDescriptions"])


def delete_target_group(ctx: AwsContext, live: Live) -> None:
    """Delete the target group; one already gone counts as deleted, other failures raise ProviderError."""
    _gone(ctx.client("elbv2").delete_target_group, ("TargetGroupNotFound",), TargetGroupArn=live["arn"])


def create_load_balancer(ctx: AwsContext, attrs: dict[str, Any]) -> Live:
    """The load balancer ``<cluster>-lb`` (cut to 32 characters) across the network's subnets, in the ``lb`` security
    group, with the planned ``scheme`` and ``type``. Returns ``arn`` and ``dns_name``; raises ProviderError when the
    call fails.
    """
    made = call("create the load balancer", ctx.client("elbv2").create_load_balancer,
                Name=ctx.name("lb")[:32], Subnets=ctx.of("aws_network.main", "subnet_ids"),
                SecurityGroups=[ctx.of("aws_security_group.lb", "group_id")], Scheme=attrs["scheme"],
                Type=attrs["type"], Tags=ctx.tags("lb"))["LoadBalancers"][0]
    return {"arn": made["LoadBalancerArn"], "dns_name": made["DNSName"]}


def delete_load_balancer(ctx: AwsContext, live: Live) -> None:
    """Delete the load balancer; one already gone counts as deleted, other failures raise ProviderError."""
    _gone(ctx.client("elbv2").delete_load_balancer, ("LoadBalancerNotFound",), LoadBalancerArn=live["arn"])


def create_listener(ctx: AwsContext, attrs: dict[str, Any]) -> Live:
    """The load balancer's listener on the planned ``protocol`` and ``port``, forwarding every request to target group
    ``attrs["forward_to"]``. Returns ``{"arn"}``; raises ProviderError when the call fails.
    """
    made = call("create the listener", ctx.client("elbv2").create_listener,
                LoadBalancerArn=ctx.of("aws_lb.main", "arn"), Protocol=attrs["protocol"], Port=attrs["port"],
                DefaultActions=[{"Type": "forward",
                                 "TargetGroupArn": ctx.of(f"aws_lb_target_group.{attrs['forward_to']}", "arn")}])
    return {"arn": made["Listeners"][0]["ListenerArn"]}


def delete_listener(ctx: AwsContext, live: Live) -> None:
    """Delete the listener; one already gone counts as deleted, other failures raise ProviderError."""
    _gone(ctx.client("elbv2").delete_listener, ("ListenerNotFound",), ListenerArn=live["arn"])


def tagged_leftovers(ctx: AwsContext) -> dict[str, list[str]]:
    """Everything tagged for this cluster that still exists: empty after a destroy."""
    ec2, autoscaling, elbv2 = ctx.client("ec2"), ctx.client("autoscaling"), ctx.client("elbv2")
    owned = [{"Name": f"tag:{TAG}", "Values": [ctx.cluster]}]
    left: dict[str, list[str]] = {
        "vpcs": [v["VpcId"] for v in ec2.describe_vpcs(Filters=owned)["Vpcs"]],
        "subnets": [s["SubnetId"] for s in ec2.describe_subnets(Filters=owned)["Subnets"]],
        "security_groups": [g["GroupId"] for g in ec2.describe_security_groups(Filters=owned)["SecurityGroups"]],
        "launch_templates": [t["LaunchTemplateId"] for t in ec2.describe_launch_templates(Filters=owned)["LaunchTemplates"]],
        "auto_scaling_groups": [
            g["AutoScalingGroupName"] for g in autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]
            if any(t["Key"] == TAG and t["Value"] == ctx.cluster for t in g.get("Tags", []))
        ],
        "load_balancers": [lb["LoadBalancerName"] for lb in elbv2.describe_load_balancers()["LoadBalancers"]
                           if lb["LoadBalancerName"].startswith(ctx.name(""))],
        "target_groups": [tg["TargetGroupName"] for tg in elbv2.describe_target_groups()["TargetGroups"]
                          if tg["TargetGroupName"].startswith(ctx.name(""))],
        "running_instances": [
            i["InstanceId"]
            for r in ec2.describe_instances(Filters=owned + [{"Name": "instance-state-name", "Values": ["pending", "running"]}])["Reservations"]
            for i in r["Instances"]
        ],
    }
    return {kind: ids for kind, ids in left.items() if ids}


# --- one entry per verb ----------------------------------------------------------------------------------------------

def create(ctx: AwsContext, kind: str, label: str, attrs: dict[str, Any], code: bytes, token: str) -> Live:
    """Create one planned resource of ``kind`` (``aws_network``, ``node_group``, …) and return its live identifiers.

    ``code`` is the zip an ``aws_s3_object`` uploads and ``token`` the Ray token an ``aws_ssm_parameter`` keeps;
    other kinds ignore them. Raises ProviderError for a kind it does not know or a failed call.
    """
    if kind == "aws_network":
        return create_network(ctx, attrs)
    if kind == "aws_security_group":
        return create_security_group(ctx, label, attrs)
    if kind == "aws_iam_role":
        return create_iam_role(ctx, attrs, attrs["code_bucket"])
    if kind == "aws_s3_bucket":
        return create_bucket(ctx, attrs)
    if kind == "aws_ssm_parameter":
        return put_token(ctx, attrs, token)
    if kind == "aws_s3_object":
        return put_code(ctx, attrs, code)
    if kind == "aws_lb_target_group":
        return create_target_group(ctx, attrs)
    if kind == "aws_launch_template":
        return create_launch_template(ctx, label, attrs)
    if kind == "node_group":
        return create_node_group(ctx, label, attrs)
    if kind == "aws_lb":
        return create_load_balancer(ctx, attrs)
    if kind == "aws_lb_listener":
        return create_listener(ctx, attrs)
    raise ProviderError(f"{kind}.{label}: servectl does not know how to create a {kind}")


def update(ctx: AwsContext, kind: str, label: str, attrs: dict[str, Any], live: Live, token: str) -> Live:
    """The in-place changes the planner allows (IN_PLACE_INFRA_ATTRIBUTES); anything else is a replace."""
    if kind == "aws_launch_template":
        return update_launch_template(ctx, label, attrs, live)
    if kind == "node_group":
        return update_node_group(ctx, attrs, live)
    if kind == "aws_security_group":
        return update_security_group(ctx, label, attrs, live)
    return live  # target group health check and the like: nothing AWS needs told


def delete(ctx: AwsContext, kind: str, live: Live) -> None:
    """Delete one resource given its live identifiers; an empty ``live`` (never created) is nothing to do.

    Parts already gone count as deleted, as Terraform treats a resource removed outside it; other failures raise
    ProviderError. A ``kind`` it does not know raises KeyError.
    """
    if not live:
        return  # never created (a failed create): nothing to remove
    deleters: dict[str, Callable[[AwsContext, Live], None]] = {
        "aws_network": delete_network,
        "aws_security_group": delete_security_group,
        "aws_iam_role": delete_iam_role,
        "aws_ssm_parameter": delete_token,
        "aws_s3_bucket": delete_bucket,
        "aws_s3_object": delete_code,
        "aws_lb_target_group": delete_target_group,
        "aws_launch_template": delete_launch_template,
        "node_group": delete_node_group,
        "aws_lb": delete_load_balancer,
        "aws_lb_listener": delete_listener,
    }
    if kind not in deleters:
        raise ProviderError(f"{kind}: servectl does not know how to delete a {kind}")
    deleters[kind](ctx, live)


def find_live(ctx: AwsContext, kind: str, label: str, attrs: dict[str, Any]) -> Live:
    """Find a resource by its name or tags, for a delete whose ids the state lacks (a crash between create and record)."""
    ec2 = ctx.client("ec2")
    owned = [{"Name": f"tag:{TAG}", "Values": [ctx.cluster]}]
    if kind == "aws_network":
        if attrs.get("vpc_id"):
            return {"vpc_id": attrs["vpc_id"], "subnet_ids": list(attrs.get("subnet_ids") or []), "owned": False}
        vpcs = ec2.describe_vpcs(Filters=owned)["Vpcs"]
        if not vpcs:
            return {}
        vpc = vpcs[0]["VpcId"]
        in_vpc = [{"Name": "vpc-id", "Values": [vpc]}]
        tables = [t for t in ec2.describe_route_tables(Filters=in_vpc + owned)["RouteTables"]]
        gateways = ec2.describe_internet_gateways(Filters=[{"Name": "attachment.vpc-id", "Values": [vpc]}])
        return {
            "vpc_id": vpc, "owned": True,
            "subnet_ids": [s["SubnetId"] for s in ec2.describe_subnets(Filters=in_vpc)["Subnets"]],
            "route_table_id": tables[0]["RouteTableId"] if tables else None,
            "associations": [a["RouteTableAssociationId"] for t in tables for a in t.get("Associations", [])
                             if not a.get("Main")],
            "igw_id": (gateways["InternetGateways"] or [{}])[0].get("InternetGatewayId"),
        }
    if kind == "aws_security_group":
        found = ec2.describe_security_groups(Filters=owned + [{"Name": "group-name", "Values": [ctx.name(label)]}])
        return {"group_id": found["SecurityGroups"][0]["GroupId"]} if found["SecurityGroups"] else {}
    if kind == "aws_iam_role":
        return {"role_name": attrs["name"]}
    if kind == "aws_ssm_parameter":
        return {"name": token_parameter_name(ctx.cluster)}
    if kind == "aws_s3_bucket":
        return {"bucket": attrs["bucket"]}
    if kind == "aws_s3_object":
        return {"bucket": attrs["bucket"], "key": attrs["key"]}
    if kind == "aws_launch_template":
        found = ec2.describe_launch_templates(Filters=owned + [{"Name": "launch-template-name", "Values": [ctx.name(label)]}])
        return {"launch_template_id": found["LaunchTemplates"][0]["LaunchTemplateId"]} if found["LaunchTemplates"] else {}
    if kind == "node_group":
        return {"asg_name": ctx.name(label)}
    elbv2 = ctx.client("elbv2")
    if kind == "aws_lb_target_group":
        groups = [g for g in elbv2.describe_target_groups()["TargetGroups"] if g["TargetGroupName"] == ctx.name(label)[:32]]
        return {"arn": groups[0]["TargetGroupArn"]} if groups else {}
    if kind == "aws_lb":
        balancers = [b for b in elbv2.describe_load_balancers()["LoadBalancers"] if b["LoadBalancerName"] == ctx.name("lb")[:32]]
        return {"arn": balancers[0]["LoadBalancerArn"]} if balancers else {}
    if kind == "aws_lb_listener":
        balancer = find_live(ctx, "aws_lb", "main", {})
        if not balancer:
            return {}
        listeners = elbv2.describe_listeners(LoadBalancerArn=balancer["arn"])["Listeners"]
        return {"arn": listeners[0]["ListenerArn"]} if listeners else {}
    return {}
