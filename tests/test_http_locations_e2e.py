"""HTTP locations on the local cluster: HeadOnly (default, every other test), EveryNode and NoServer.

Multi-node behaviour (a proxy per node behind a load balancer) belongs to the AWS provider's tests.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import requests

from tests.conftest import run_cli, started_cluster, write_config
from tests.test_cli_e2e import serve_details

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A cluster of this module's own, without Serve's direct ingress: under it Serve serves HTTP from the head
    only, whatever location it is given (servectl refuses the others there), so EveryNode and NoServer — the
    fallback data path's locations — are tested where Serve allows them, as a user's cluster started without it."""
    with started_cluster(tmp_path_factory.mktemp("python-ingress-cluster"), None) as cluster:
        yield cluster

LOCATED = '''
from servectl import Backend, Endpoint, LocalRay, var
LocalRay(http_location=var("location", default="NoServer"))
echo = Backend("located", "models:Echo", ray_actor_options={"num_cpus": 0.1})
Endpoint("located", route="/located", backend=echo)
'''
MODELS = '''
class Echo:
    async def __call__(self, request):
        body = await request.body() if hasattr(request, "body") else b""
        return {"path": request.url.path if hasattr(request, "url") else None, "body": body.decode()}
'''
CLIENT = '''
import json, sys
import servectl
servectl.connect(sys.argv[1])
print(json.dumps(servectl.get_handle("located").remote("through a handle").result(timeout_s=60)))
'''


def call_through_handle(config) -> dict:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(CLIENT), str(config)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def proxy_location(cluster) -> str:
    location = serve_details(cluster)["proxy_location"]
    return str(getattr(location, "value", location))


def test_no_server_serves_handles_and_opens_no_http_port_and_a_driver_outlives_a_serve_restart(
    ray_cluster, tmp_path, applied_dirs,
):
    config = write_config(tmp_path / "no_server", LOCATED, models=MODELS)
    applied_dirs.append(config)
    applied = run_cli(config, "apply", "--auto-approve")
    assert applied.code == 0, applied.output
    assert proxy_location(ray_cluster) == "Disabled"
    assert serve_details(ray_cluster)["proxies"] == {}  # no Serve HTTP proxy anywhere
    with pytest.raises(requests.ConnectionError):  # and no front proxy on the public port
        requests.get(ray_cluster.url("/located"), timeout=5)
    assert call_through_handle(config)["body"] == "through a handle"

    moved = run_cli(config, "plan", "--var", "location=HeadOnly")
    assert moved.code == 1
    assert "http_location" in moved.stderr and "destroy" in moved.stderr

    # A driver that reached Serve once still gets handles after Serve restarted (destroy, then an apply with another
    # location): Serve caches its controller's client per driver, and that client names the killed controller. In
    # one pytest worker a streaming test's handle failed that way after an earlier file's location change (CI).
    import servectl

    servectl.connect(str(config))
    assert servectl.get_handle("located").remote("before").result(timeout_s=60)["body"] == "before"
    before = serve_details(ray_cluster)["controller_info"]["actor_id"]
    assert run_cli(config, "destroy", "--auto-approve").code == 0
    applied = run_cli(config, "apply", "--var", "location=HeadOnly", "--auto-approve")
    assert applied.code == 0, applied.output
    servectl.connect(str(config))  # before anything here asks Serve again (serve_details forgets the old client)
    assert servectl.get_handle("located").remote("after").result(timeout_s=60)["body"] == "after"
    assert serve_details(ray_cluster)["controller_info"]["actor_id"] != before  # Serve did restart


def test_every_node_runs_a_proxy_per_node_and_serves_http(ray_cluster, tmp_path, applied_dirs):
    config = write_config(tmp_path / "every_node", LOCATED, models=MODELS)
    applied_dirs.append(config)
    applied = run_cli(config, "apply", "--var", "location=EveryNode", "--auto-approve")
    assert applied.code == 0, applied.output
    assert proxy_location(ray_cluster) == "EveryNode"
    assert len(serve_details(ray_cluster)["proxies"]) == 1  # one node here: one proxy
    response = requests.post(ray_cluster.url("/located/x"), data="over http", timeout=30)
    assert response.status_code == 200 and response.json()["body"] == "over http"
    assert call_through_handle(config)["body"] == "through a handle"
    # Destroy works where things were applied, even when the config's location moved since.
    destroyed = run_cli(config, "destroy", "--auto-approve")
    assert destroyed.code == 0, destroyed.output
    assert run_cli(config, "state", "list").stdout.strip() == ""

