"""Playing an AWS head's boot in tests: what its boot script would read (the launch template, SSM) in moto."""
from __future__ import annotations

import base64
import re
import shlex
import time

from servectl.providers.aws import resources as aws


def head_boot(ctx: aws.AwsContext, timeout_s: float = 120) -> dict[str, object]:
    """The Ray token (from SSM, as the node's role reads it) and the node agent's arguments (from the head's launch
    template), in moto.

    The agent arguments stop before ``--node-ip``: the caller supplies the node's own address as
    ``"$NODE_IP"`` does on EC2.
    """
    ec2 = ctx.client("ec2")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = ec2.describe_launch_templates(Filters=[{"Name": "launch-template-name", "Values": [ctx.name("head")]}])
        if found["LaunchTemplates"]:
            template = found["LaunchTemplates"][0]["LaunchTemplateId"]
            version = ec2.describe_launch_template_versions(LaunchTemplateId=template, Versions=["$Latest"])
            script = base64.b64decode(version["LaunchTemplateVersions"][0]["LaunchTemplateData"]["UserData"]).decode()
            agent = re.search(r"-m servectl.node_agent (.*?) --node-ip", script)
            parameter = re.search(r"aws ssm get-parameter --region \S+ --name (\S+) --with-decryption", script)
            assert agent and parameter, script
            assert not re.search(r"[0-9a-f]{64}", script), "a token in the user data"
            token = ctx.client("ssm").get_parameter(Name=parameter.group(1), WithDecryption=True)["Parameter"]["Value"]
            return {"token": token, "agent_args": shlex.split(agent.group(1))}
        time.sleep(0.5)
    raise AssertionError("apply never created the head's launch template")
