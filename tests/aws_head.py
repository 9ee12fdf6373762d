"""Playing an AWS head's boot in tests: what its user data would read from the launch template servectl made."""
from __future__ import annotations

import base64
import re
import time

from servectl.providers import aws_resources as aws


def head_boot(ctx: aws.AwsContext, timeout_s: float = 120) -> dict[str, object]:
    """The Ray token and the node agent's arguments from the head's launch template (in moto).

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
            token = re.search(r"printf '%s' '([0-9a-f]+)' > /etc/ray/token", script)
            assert agent and token, script
            return {"token": token.group(1), "agent_args": agent.group(1).split()}
        time.sleep(0.5)
    raise AssertionError("apply never created the head's launch template")
