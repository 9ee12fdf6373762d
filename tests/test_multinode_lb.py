"""A real 3-node Ray cluster (one network namespace per node) behind Debian's haproxy: a node dies under load.

Serve runs a proxy on every node (EveryNode), deployed through Ray's dashboard
REST API with the cluster's token — the path the AWS provider takes to a
head node. haproxy checks each node's ``/-/healthz`` every 0.5 s and retries
a request that met a dead connection on another node. A bounded load
generator sends requests through haproxy while one worker node is killed
(every process in its namespace, SIGKILL) and a replacement joins.
"""
from __future__ import annotations

import io
import os
import threading
import time
import zipfile
from collections import Counter

import pytest
import requests

from servectl.providers.dashboard import RayDashboard
from servectl.providers.embedded_cluster import free_ports
from tests.multinode import SERVE_PORT, MultiNodeCluster, missing_tools

pytestmark = pytest.mark.multinode

APP = '''
from ray import serve

@serve.deployment
class Where:
    def __call__(self, request):
        return serve.get_replica_context().replica_id.unique_id

app = Where.bind()
'''
REQUESTS_AT_LEAST = 2000


def code_package() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("multinode_app.py", APP)
    return buffer.getvalue()


@pytest.fixture
def cluster(tmp_path):
    if os.geteuid() != 0 or missing_tools():
        pytest.fail(f"this test needs root and {missing_tools() or 'ip/haproxy'} (.ci/run installs iproute2 and haproxy)")
    net = MultiNodeCluster(tmp_path)
    try:
        net.create_network()
        for index, name in enumerate(("head", "w1", "w2"), start=2):
            net.add_namespace(name, index)
        started = time.monotonic()
        net.start_ray("head", head=True)
        net.start_ray("w1")
        net.start_ray("w2")
        net.up_s = time.monotonic() - started
        yield net
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


def test_a_node_killed_under_load_costs_no_request(cluster):
    dashboard = RayDashboard(cluster.dashboard_url, cluster.token)
    wait_for(lambda: len(dashboard.nodes()) == 3, 60, "three Ray nodes registering")
    uri = "gcs://_ray_pkg_servectl_multinode.zip"
    dashboard.upload_package(uri, code_package())
    dashboard.deploy({
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": SERVE_PORT},
        "applications": [{
            "name": "where", "route_prefix": "/", "import_path": "multinode_app:app",
            "runtime_env": {"working_dir": uri},
            # One replica per node: 1 CPU each on 1-CPU nodes.
            "deployments": [{"name": "Where", "num_replicas": 3, "ray_actor_options": {"num_cpus": 1},
                             "graceful_shutdown_wait_loop_s": 0.2}],
        }],
    })
    wait_for(lambda: all(cluster.healthz(name) for name in ("head", "w1", "w2")), 120, "a Serve proxy on every node")
    (lb_port,) = free_ports(1)
    cluster.start_haproxy(lb_port)
    wait_for(lambda: requests.get(cluster.lb_url + "/", timeout=2).status_code == 200, 30, "haproxy serving")
    print(f"cluster up in {cluster.up_s:.1f}s")

    outcomes: Counter = Counter()
    served_by: Counter = Counter()
    done = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        with requests.Session() as session:
            while not done.is_set():
                try:
                    answer = session.get(cluster.lb_url + "/", timeout=30)
                    with lock:
                        outcomes[answer.status_code] += 1
                        served_by[answer.text] += 1
                except requests.RequestException as err:
                    with lock:
                        outcomes[type(err).__name__] += 1

    clients = [threading.Thread(target=client) for _ in range(6)]
    for thread in clients:
        thread.start()
    try:
        wait_for(lambda: sum(outcomes.values()) >= 300, 60, "300 requests before the kill")
        killed_at = time.monotonic()
        assert cluster.kill_node("w2") > 0
        assert not cluster.healthz("w2", timeout=0.5)
        time.sleep(2)  # the node is gone for a while before its replacement boots
        cluster.start_ray("w2")  # the replacement: same namespace and address, a new Ray node
        replaced = wait_for(lambda: cluster.healthz("w2"), 120, "the replacement node's Serve proxy") + 2
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
    assert errors == 0, dict(outcomes)
    assert total >= REQUESTS_AT_LEAST
