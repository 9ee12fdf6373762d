"""A real 3-node Ray cluster (one network namespace per node) behind Debian's haproxy, applied by servectl's AWS provider.

The nodes play an AWS cluster: ``servectl apply`` with an ``AwsRay`` config
creates the AWS resources on a moto_server that listens on the test bridge
only, the test boots the nodes as their user data would (Ray with the token
servectl put in the launch template, the node agent from servectl), and
servectl deploys Serve through the head's dashboard REST API with the code
zip from (moto's) S3 and publishes the 50/50 split every node agent puts on
its front proxy. haproxy, the load balancer, checks every node's front proxy
at ``/-/healthz`` every 0.5 s, retries a request that met a dead
connection on another node and, as an ALB does, routes to every node when
all fail their check (fail open: a loaded machine can slow every check past
its timeout at once). A bounded load generator sends requests through
it while one worker node is killed (every process in its namespace, SIGKILL)
and a replacement boots.
"""
from __future__ import annotations

import http.client
import os
import subprocess
import threading
import time
from collections import Counter

import pytest
import requests

from servectl.providers.aws import resources as aws
from servectl.providers.dashboard import RayDashboard
from servectl.providers.embedded_cluster import free_ports
from tests.aws_head import head_boot
from tests.conftest import SERVECTL, set_environment, write_config
from tests.multinode import MultiNodeCluster, missing_tools

pytestmark = pytest.mark.multinode

CLUSTER = "mn"
MAIN = '''
from servectl import AwsRay, Backend, Endpoint, LoadBalancer, NodeType

AwsRay(
    region="us-east-1", cluster_name="{cluster}",
    head=NodeType("head", instance_type="m6i.large", resources={{"CPU": 1}}),
    node_types=[NodeType("cpu", instance_type="m6i.large", resources={{"CPU": 1}}, min_workers=2, max_workers=3)],
    load_balancer=LoadBalancer(port=80, allowed_cidrs=["203.0.113.0/24"]),
    dashboard_url="{dashboard_url}", head_timeout_s=240,
)
# Six half-CPU replicas fill three 1-CPU nodes: every node runs two (and so a Serve proxy),
# and a dead node's replicas can only come back on its replacement.
a = Backend("a", "models:Where", "a", num_replicas=3, ray_actor_options={{"num_cpus": 0.5}})
b = Backend("b", "models:Where", "b", num_replicas=3, ray_actor_options={{"num_cpus": 0.5}})
Endpoint("split", route="/", traffic={{a: 0.5, b: 0.5}})
'''
MODELS = '''
import os


class Where:
    def __init__(self, name):
        self.name = name

    def __call__(self, request):
        return f"{self.name} {os.getpid()}"
'''
REQUESTS_AT_LEAST = 2000
NODES = ("head", "w1", "w2")


@pytest.fixture
def cluster(tmp_path):
    if os.geteuid() != 0 or missing_tools():
        pytest.fail(f"this test needs root and {missing_tools() or 'ip/haproxy'} (.ci/run installs iproute2 and haproxy)")
    net = MultiNodeCluster(tmp_path)
    try:
        net.create_network()
        for index, name in enumerate(("head", "w1", "w2"), start=2):
            net.add_namespace(name, index)
        (moto_port,) = free_ports(1)
        url = net.start_moto(moto_port)
        net.extra_env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                         "AWS_DEFAULT_REGION": "us-east-1"}
        saved = set_environment({**net.extra_env, "AWS_PROFILE": None, "AWS_SESSION_TOKEN": None})
        try:
            yield net
        finally:
            set_environment(saved)
    finally:
        net.close()


def wait_for(condition, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if condition():
                return time.monotonic() - start
        except (OSError, requests.RequestException):
            pass  # not listening yet
        time.sleep(0.25)
    raise AssertionError(f"{what} did not happen within {timeout}s")


def failure_summary(failures: list[tuple[float, object, str]]) -> str:
    """When failed answers came (seconds after the kill) and what they said: which part refused them."""
    if not failures:
        return "none"
    kinds = Counter((status, body) for _, status, body in failures)
    return (f"from {min(at for at, _, _ in failures):.1f}s to {max(at for at, _, _ in failures):.1f}s after the kill; "
            + "; ".join(f"{count}× {status} {body!r}" for (status, body), count in kinds.most_common(5)))


def boot(cluster: MultiNodeCluster, name: str, agent_args: list[str]) -> None:
    """What a node's user data does: Ray (the head, or a worker that joins it), then the node agent."""
    cluster.start_ray(name, head=name == "head")
    cluster.start_agent(name, agent_args)


def raw_get(host: str, port: int, path: str) -> tuple[int, str]:
    """A GET with the path sent byte for byte (requests would decode %5F before sending)."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.read().decode(errors="replace")
    finally:
        connection.close()


def assert_no_way_around_the_policy(cluster: MultiNodeCluster) -> None:
    """Through the load balancer and each node's front proxy, and straight at each node's Serve port: no internal
    route (however encoded) and no Serve listing is answered; only the endpoint's policy reaches a backend."""
    host, port = cluster.lb_url.split("//", 1)[1].rsplit(":", 1)
    for path in ("/_servectl/a", "/%5Fservectl/b", "/%5fservectl/a/x", "/_servectl%2Fa", "/-/routes", "/%2D/routes"):
        status, body = raw_get(host, int(port), path)
        assert status == 404 and not body.startswith(("a ", "b ")) and '"/_servectl/' not in body, (path, status, body)
    for name in NODES:
        try:
            status, body = raw_get(cluster.nodes[name].ip, 8001, "/_servectl/a")
        except OSError:
            continue  # no Serve proxy on this node
        assert not body.startswith("a "), (name, status, body)  # no route proof: the replica does not answer


def test_a_node_killed_under_load_costs_no_request(cluster, tmp_path):
    config = write_config(tmp_path / "cfg", MAIN.format(cluster=CLUSTER, dashboard_url=cluster.dashboard_url),
                          models=MODELS)
    applying = subprocess.Popen([SERVECTL, "apply", "--auto-approve", "--timeout", "180"], cwd=config,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        started = time.monotonic()
        booted = head_boot(aws.AwsContext(region="us-east-1", cluster=CLUSTER))
        cluster.use_token(str(booted["token"]))
        agent_args = list(booted["agent_args"])
        for name in NODES:
            boot(cluster, name, agent_args)
        cluster.up_s = time.monotonic() - started
        output, _ = applying.communicate(timeout=400)
    finally:
        if applying.poll() is None:
            applying.kill()
    assert applying.returncode == 0, output
    dashboard = RayDashboard(cluster.dashboard_url, cluster.token)
    assert len(dashboard.nodes()) == 3
    wait_for(lambda: all(cluster.healthz(name) for name in NODES), 60, "every node's front proxy healthy")
    (lb_port,) = free_ports(1)
    cluster.start_haproxy(lb_port)
    wait_for(lambda: requests.get(cluster.lb_url + "/", timeout=2).status_code == 200, 30, "haproxy serving")
    print(f"cluster up in {cluster.up_s:.1f}s")
    assert_no_way_around_the_policy(cluster)

    outcomes: Counter = Counter()
    served_by: Counter = Counter()
    failures: list[tuple[float, object, str]] = []  # (seconds since the kill, status or error, the body's start)
    killed_at = float("inf")
    done = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        with requests.Session() as session:
            while not done.is_set():
                try:
                    answer = session.get(cluster.lb_url + "/", timeout=30)
                    with lock:
                        outcomes[answer.status_code] += 1
                        if answer.status_code == 200:
                            served_by[answer.text] += 1
                        else:
                            failures.append((time.monotonic() - killed_at, answer.status_code, answer.text[:160]))
                except requests.RequestException as err:
                    with lock:
                        outcomes[type(err).__name__] += 1
                        failures.append((time.monotonic() - killed_at, type(err).__name__, str(err)[:160]))
                time.sleep(0.02)  # paced: the two cores also run the three nodes and the suite's other workers

    clients = [threading.Thread(target=client) for _ in range(6)]
    for thread in clients:
        thread.start()
    try:
        wait_for(lambda: sum(outcomes.values()) >= 300, 60, "300 requests before the kill")
        killed_at = time.monotonic()
        assert cluster.kill_node("w2") > 0
        assert not cluster.healthz("w2", timeout=0.5)
        time.sleep(2)  # the node is gone for a while before its replacement boots
        boot(cluster, "w2", agent_args)  # the replacement: same namespace and address, a new Ray node
        # A worker's Serve proxy is healthy once a replica runs beside it: 63 s on a loaded CI machine, over 120 s
        # with four busy loops beside the test on two cores.
        replaced = wait_for(lambda: cluster.healthz("w2"), 180, "the replacement node's proxies") + 2
        wait_for(lambda: sum(outcomes.values()) >= REQUESTS_AT_LEAST, 120, f"{REQUESTS_AT_LEAST} requests")
        serving_after = time.monotonic() - killed_at
    finally:
        done.set()
        for thread in clients:
            thread.join()
    total = sum(outcomes.values())
    errors = total - outcomes[200]
    print(f"requests={total} errors={errors} replacement_serving_after={replaced:.1f}s "
          f"(load ran {serving_after:.1f}s after the kill) replicas_seen={len(served_by)} outcomes={dict(outcomes)}")
    assert errors == 0, (dict(outcomes), failure_summary(failures), cluster.lb_server_changes())
    assert total >= REQUESTS_AT_LEAST
    backends = Counter(text.split()[0] for text in served_by.elements())
    assert abs(backends["a"] / total - 0.5) < 0.1, backends  # the split servectl applied, on every node

    destroyed = subprocess.run([SERVECTL, "destroy", "--auto-approve"], cwd=config, capture_output=True, text=True,
                               timeout=300)
    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    assert dashboard.serve_details().get("applications") in ({}, None)
    assert aws.tagged_leftovers(aws.AwsContext(region="us-east-1", cluster=CLUSTER)) == {}
