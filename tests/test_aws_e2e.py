"""The AWS provider end to end through the real CLI: AWS on moto_server, the head played by a real Ray cluster.

moto creates every AWS resource (and fake instances for the Auto Scaling
groups, which it registers as targets; it reports every target healthy and
never probes, so nothing here claims health checking). The instances do not
boot, so the test does what the head's user data does: it reads the Ray
token and the node agent's arguments from the head's launch template in
moto, starts a Ray head with that token (with moto as its S3, so the runtime
env fetches the code zip from there) and starts ``servectl.node_agent`` on
it. servectl reaches the head's dashboard through ``AwsRay(dashboard_url=…)``
as a user would through a tunnel. Requests go through the node agent's front
proxy — the process the load balancer targets on every node.
"""
from __future__ import annotations

import collections
import os
import subprocess
import sys
import time

import requests

from servectl.providers.aws import resources as aws
from servectl.providers.embedded_cluster import EmbeddedCluster, free_ports
from tests.aws_head import head_boot
from tests.conftest import REPO, SERVECTL, write_config

CLUSTER = "e2e"

MAIN = '''
from servectl import AwsRay, Backend, Endpoint, LoadBalancer, NodeType, var

AwsRay(
    region="us-east-1", cluster_name="{cluster}",
    head=NodeType("head", instance_type="m6i.large", resources={{"CPU": 2}}, hourly_price=0.096),
    node_types=[
        NodeType("cpu", instance_type="m6i.xlarge", resources={{"CPU": 4}}, min_workers=1, max_workers=3,
                 hourly_price=0.192),
        NodeType("gpu", instance_type="g5.xlarge", resources={{"CPU": 4, "GPU": 1}}, max_workers=4,
                 hourly_price=1.006),
    ],
    load_balancer=LoadBalancer(port=80, allowed_cidrs=["203.0.113.0/24"]),
    proxy_port={proxy_port}, serve_port={serve_port}, dashboard_url="{dashboard_url}", head_timeout_s=180,
)
a = Backend("a", "models:Named", "a", ray_actor_options={{"num_cpus": 0.1}})
b = Backend("b", "models:Named", "b", ray_actor_options={{"num_cpus": 0.1}})
vision = Backend("vision", "models:Named", "vision", num_replicas=var("vision_replicas", default=1),
                 ray_actor_options={{"num_cpus": 0.1, "num_gpus": 1}})
Endpoint("split", route="/split", traffic={{a: 0.5, b: 0.5}})
Endpoint("vision", route="/vision", backend=vision)
'''

MODELS = '''
class Named:
    def __init__(self, name):
        self.name = name

    async def __call__(self, request):
        return {"backend": self.name}
'''


def _node_ip(dashboard_url: str, token: str, timeout_s: float = 60) -> str:
    """The IP Ray gives the head node (as the agent's --node-ip \"$NODE_IP\" does on EC2)."""
    from servectl.providers.dashboard import RayDashboard

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # the dashboard lists a new node a few seconds after it starts
        nodes = RayDashboard(dashboard_url, token).nodes()
        if nodes:
            return str(nodes[0]["node_ip"])
        time.sleep(0.5)
    raise AssertionError("the head never appeared in the dashboard's node list")


def _split(url: str, count: int) -> collections.Counter:
    seen: collections.Counter = collections.Counter()
    with requests.Session() as session:
        for _ in range(count):
            answer = session.get(url, timeout=30)
            assert answer.status_code == 200, answer.text
            seen[answer.json()["backend"]] += 1
    return seen


def _cli(config, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([SERVECTL, *args], cwd=config, capture_output=True, text=True, timeout=timeout)


def test_plan_apply_split_grow_drift_rollback_and_destroy_on_aws(moto_server, tmp_path):
    proxy_port, serve_port, dashboard_port = free_ports(3)
    config = write_config(
        tmp_path / "cfg",
        MAIN.format(cluster=CLUSTER, proxy_port=proxy_port, serve_port=serve_port,
                    dashboard_url=f"http://127.0.0.1:{dashboard_port}"),
        models=MODELS,
    )
    ctx = aws.AwsContext(region="us-east-1", cluster=CLUSTER)
    head = EmbeddedCluster(str(tmp_path / "head"))
    agent = None
    agent_log = open(tmp_path / "agent.log", "wb")
    try:
        applying = subprocess.Popen([SERVECTL, "apply", "--auto-approve", "--timeout", "90"], cwd=config, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
        boot = head_boot(ctx)
        # The head boots: Ray with the token from user data, moto as its S3 (the env this process has).
        os.makedirs(head.runtime_dir, mode=0o700, exist_ok=True)
        with open(os.path.join(head.runtime_dir, "ray-token"), "w", encoding="utf-8") as handle:
            handle.write(boot["token"])
        # An EC2 node reads S3 with its instance role; this one is given moto's endpoint and dummy keys.
        node_credentials = {key: value for key, value in os.environ.items() if key.startswith("AWS_")}
        record = head.start(num_cpus=4, num_gpus=3, resources={}, dashboard_port=dashboard_port,
                            extra_env=node_credentials)
        node_ip = _node_ip(f"http://127.0.0.1:{dashboard_port}", boot["token"])
        agent = subprocess.Popen(
            [sys.executable, "-m", "servectl.node_agent", *boot["agent_args"], "--node-ip", node_ip,
             "--listen", f"127.0.0.1:{proxy_port}", "--ray-address", record.gcs_address,
             "--runtime-dir", str(tmp_path / "agent"),
             "--token-path", record.token_path, "--interval", "0.5"],
            stdout=agent_log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
        )
        output, _ = applying.communicate(timeout=600)
        assert applying.returncode == 0, output
        assert "Apply complete! 22 added" in output, output

        # Traffic: the node's front proxy splits /split between a and b, /vision goes to vision.
        seen = _split(f"http://127.0.0.1:{proxy_port}/split", 400)
        assert set(seen) == {"a", "b"} and abs(seen["a"] / 400 - 0.5) < 0.1, seen
        assert _split(f"http://127.0.0.1:{proxy_port}/vision", 5) == {"vision": 5}
        assert requests.get(f"http://127.0.0.1:{proxy_port}/-/healthz", timeout=10).status_code == 200

        # status reads Serve's state from the head's dashboard.
        status = _cli(config, "status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert all(name in status.stdout for name in ("split", "vision", "HEALTHY")), status.stdout
        print(status.stdout)

        # Nothing to do on a second plan.
        again = _cli(config, "plan", "--detailed-exitcode")
        assert again.returncode == 0, again.stdout + again.stderr

        # vision 1 → 3 replicas: the GPU node group grows 1 → 3, the new instances become targets.
        grow = _cli(config, "plan", "--var", "vision_replicas=3")
        assert "desired 1 → 3 (+2 g5.xlarge, +$2.01/h)" in grow.stdout, grow.stdout
        grown = _cli(config, "apply", "--auto-approve", "--var", "vision_replicas=3")
        assert grown.returncode == 0, grown.stdout + grown.stderr
        state_live = aws.read_node_group(ctx, {"asg_name": f"{CLUSTER}-gpu"})
        assert (state_live["desired_capacity"], len(state_live["instances"])) == (3, 3)
        target_group = [g for g in ctx.client("elbv2").describe_target_groups()["TargetGroups"]
                        if g["TargetGroupName"] == f"{CLUSTER}-serve"][0]
        assert set(state_live["instances"]) <= set(aws.registered_targets(ctx, {"arn": target_group["TargetGroupArn"]}))
        assert _split(f"http://127.0.0.1:{proxy_port}/vision", 5) == {"vision": 5}

        # A hand resize behind servectl's back is drift.
        ctx.client("autoscaling").update_auto_scaling_group(AutoScalingGroupName=f"{CLUSTER}-gpu", DesiredCapacity=1)
        drift = _cli(config, "drift", "--var", "vision_replicas=3")
        assert drift.returncode == 2, drift.stdout + drift.stderr
        assert "node_group.gpu" in drift.stdout and "desired_capacity" in drift.stdout, drift.stdout

        # A saved plan is refused once the live system moved (here: a new routing version published behind it).
        saved = _cli(config, "plan", "--var", "vision_replicas=3", "--out", str(tmp_path / "aws.plan"))
        assert saved.returncode == 0, saved.stdout + saved.stderr
        from servectl.providers.aws.routing import RoutingStore

        store = RoutingStore(ctx.client("s3"), f"{CLUSTER}-code-us-east-1", CLUSTER)
        current = store.current()
        store.publish(current["endpoints"], current["backends"], current["serve_port"], current["node_groups"])
        stale = _cli(config, "apply", str(tmp_path / "aws.plan"))
        assert stale.returncode == 1 and "the live system changed since this plan was made" in stale.stderr, stale.stderr

        # Rollback to the first apply: vision back to 1 replica, the GPU group back to 1 node.
        rolled = _cli(config, "rollback", "--auto-approve", "--timeout", "90")
        assert rolled.returncode == 0, rolled.stdout + rolled.stderr
        gpu = aws.read_node_group(ctx, {"asg_name": f"{CLUSTER}-gpu"})
        assert gpu["desired_capacity"] == 1, gpu
        assert _split(f"http://127.0.0.1:{proxy_port}/vision", 3) == {"vision": 3}
        assert set(_split(f"http://127.0.0.1:{proxy_port}/split", 40)) == {"a", "b"}

        # Destroy: Serve's applications, then every AWS resource; describe calls prove nothing is left.
        destroyed = _cli(config, "destroy", "--auto-approve")
        assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
        assert aws.tagged_leftovers(ctx) == {}
        listed = ctx.client("s3").list_buckets()["Buckets"]
        assert f"{CLUSTER}-code-us-east-1" not in {b["Name"] for b in listed}
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(timeout=10)
        from servectl.providers.front_proxy import FrontProxy

        FrontProxy(str(tmp_path / "agent")).stop()
        head.stop()
        agent_log.close()
