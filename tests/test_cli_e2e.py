"""End to end through the real ``servectl`` entry point on a real Ray cluster with real HTTP."""
from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from servectl.providers.local_ray import connect
from tests.conftest import RayCluster, copy_example, run_cli, wait_for_http, write_config

pytestmark = pytest.mark.ray


def serve_details(cluster: RayCluster) -> dict:
    connect(cluster.address, cluster.token_path)
    from ray.serve.context import _disconnect, _get_global_client

    _disconnect()  # Serve may have been restarted (another HTTP location) since this process last asked
    return _get_global_client().get_serve_details()


def replica_pids(cluster: RayCluster, app: str) -> set[int]:
    deployment = serve_details(cluster)["applications"][app]["deployments"][app]
    return {r["pid"] for r in deployment["replicas"] if str(getattr(r["state"], "value", r["state"])) == "RUNNING"}


def test_quickstart_apply_serve_replan_show_destroy(ray_cluster, tmp_path, applied_dirs):
    config = copy_example("quickstart", tmp_path)
    applied_dirs.append(config)

    result = run_cli(config, "apply", "--auto-approve")
    assert result.code == 0, result.output
    assert "+ backend \"hello\"" in result.stdout and "Plan: 2 to add, 0 to change" in result.stdout
    assert "Apply complete!" in result.stdout
    response = requests.get(ray_cluster.url("/hello?name=tests"), timeout=10)
    assert response.status_code == 200 and response.text == "Hello from servectl, tests!"

    again = run_cli(config, "plan", "--detailed-exitcode")
    assert again.code == 0, again.output
    assert "No changes." in again.stdout

    listed = run_cli(config, "state", "list")
    assert listed.stdout.split() == ["backend.hello", "endpoint.hello"]
    shown = run_cli(config, "state", "show", "backend.hello")
    assert 'init_args = ["Hello from servectl"]' in shown.stdout and "live.application = \"hello\"" in shown.stdout
    as_json = json.loads(run_cli(config, "show", "--json").stdout)
    assert as_json["format_version"] == 1 and set(as_json["resources"]) == {"backend.hello", "endpoint.hello"}

    gone = run_cli(config, "destroy", "--auto-approve")
    assert gone.code == 0, gone.output
    assert "2 destroyed" in gone.stdout
    with pytest.raises(requests.ConnectionError):  # the front proxy went with the last endpoint
        requests.get(ray_cluster.url("/hello"), timeout=10)
    assert "hello" not in serve_details(ray_cluster)["applications"]
    assert run_cli(config, "state", "list").stdout.strip() == ""


def test_scaling_10_to_2_is_an_in_place_update(ray_cluster, tmp_path, applied_dirs):
    config = copy_example("scaling", tmp_path)
    applied_dirs.append(config)
    app = "my_scaled_endpoint_backend"

    assert run_cli(config, "apply", "--auto-approve").code == 0
    before = replica_pids(ray_cluster, app)
    assert len(before) == 10
    assert wait_for_http(ray_cluster.url("/scaled")).json()["pid"] in before

    planned = run_cli(config, "plan", "--var", "replicas=2", "--detailed-exitcode")
    assert planned.code == 2, planned.output
    assert "~ num_replicas = 10 → 2" in planned.stdout
    assert "Plan: 0 to add, 1 to change, 0 to replace, 0 to destroy; replicas -8 (10 → 2)" in planned.stdout

    applied = run_cli(config, "apply", "--var", "replicas=2", "--auto-approve")
    assert applied.code == 0, applied.output
    after = replica_pids(ray_cluster, app)
    assert len(after) == 2 and after <= before  # the survivors kept running: nothing restarted
    assert run_cli(config, "plan", "--var", "replicas=2", "--detailed-exitcode").code == 0


def test_code_change_replaces_replicas_while_the_route_keeps_answering(ray_cluster, tmp_path, applied_dirs):
    config = copy_example("quickstart", tmp_path)
    applied_dirs.append(config)
    assert run_cli(config, "apply", "--auto-approve").code == 0
    old_pids = replica_pids(ray_cluster, "hello")

    models = config / "models.py"
    models.write_text(models.read_text().replace('f"{self.greeting}, {name}!"', 'f"{self.greeting}, {name}! (v2)"'))
    planned = run_cli(config, "plan")
    assert "-/+ backend \"hello\"" in planned.stdout and "code changed (sha256" in planned.stdout

    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        deadline = time.time() + 60
        while not stop.is_set() and time.time() < deadline:
            try:
                statuses.append(requests.get(ray_cluster.url("/hello"), timeout=10).status_code)
            except requests.RequestException:
                statuses.append(0)
            time.sleep(0.01)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        applied = run_cli(config, "apply", "--auto-approve")
    finally:
        stop.set()
        worker.join()
    assert applied.code == 0, applied.output
    print(f"{len(statuses)} requests during the replace, non-200: {[s for s in statuses if s != 200]}")
    assert statuses and all(s == 200 for s in statuses)
    assert requests.get(ray_cluster.url("/hello"), timeout=10).text.endswith("(v2)")
    assert replica_pids(ray_cluster, "hello").isdisjoint(old_pids)


GOOD = """
from servectl import Backend, Endpoint, LocalRay
LocalRay()
b = Backend("guarded", "models:M", ray_actor_options={"num_cpus": 0.1})
Endpoint("guarded", route="/guarded", backend=b)
"""
MODELS = "class M:\n    def __call__(self, request):\n        return 'ok'\n"


def _assert_one_clear_line(result, expected: str) -> None:
    assert result.code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert expected in lines[0], lines[0]


def test_apply_without_approval_changes_nothing(ray_cluster, tmp_path):
    config = write_config(tmp_path / "unapproved", GOOD.replace("guarded", "unapproved"), models=MODELS)
    result = run_cli(config, "apply", stdin="no\n")
    _assert_one_clear_line(result, "apply cancelled: not approved")
    assert not (config / "servectl.state.json").exists()
    assert "unapproved" not in serve_details(ray_cluster)["applications"]


TWO = """
from servectl import Backend, Endpoint, LocalRay
LocalRay()
one = Backend("one", "first:One", ray_actor_options={"num_cpus": 0.1})
two = Backend("two", "second:Two", ray_actor_options={"num_cpus": 0.1})
Endpoint("one", route="/one", backend=one)
Endpoint("two", route="/two", backend=two)
"""


def test_changing_one_backend_leaves_the_others_running(ray_cluster, tmp_path, applied_dirs):
    config = write_config(
        tmp_path / "two", TWO,
        first="class One:\n    def __call__(self, request):\n        return 'one v1'\n",
        second="class Two:\n    def __call__(self, request):\n        return 'two'\n",
    )
    applied_dirs.append(config)
    assert run_cli(config, "apply", "--auto-approve").code == 0
    two_pids = replica_pids(ray_cluster, "two")

    (config / "first.py").write_text("class One:\n    def __call__(self, request):\n        return 'one v2'\n")
    planned = run_cli(config, "plan", "--json")
    actions = {c["address"]: c["action"] for c in json.loads(planned.stdout)["changes"]}
    assert actions == {"backend.one": "replace", "backend.two": "no-op", "endpoint.one": "no-op", "endpoint.two": "no-op"}

    assert run_cli(config, "apply", "--auto-approve").code == 0
    assert requests.get(ray_cluster.url("/one"), timeout=10).text == "one v2"
    assert requests.get(ray_cluster.url("/two"), timeout=10).text == "two"
    assert replica_pids(ray_cluster, "two") == two_pids  # same code package: not restarted


def test_failing_constructor_stops_apply_and_is_recorded(ray_cluster, tmp_path, applied_dirs):
    config = write_config(
        tmp_path / "failing", GOOD.replace("guarded", "failing"),
        models="class M:\n    def __init__(self):\n        raise RuntimeError('weights missing')\n"
               "    def __call__(self, request):\n        return 'ok'\n",
    )
    applied_dirs.append(config)
    result = run_cli(config, "apply", "--auto-approve", "--timeout", "120")
    assert result.code == 1, result.output
    assert "Traceback" not in result.stderr
    error = result.stderr.strip()
    assert error.startswith("Error: backend.failing:") and "weights missing" in error, error
    assert "0 of 2 changes applied and recorded" in error

    state = json.loads((config / "servectl.state.json").read_text())
    assert state["resources"]["backend.failing"]["status"] == "failed"
    assert "weights missing" in state["resources"]["backend.failing"]["error"]
    assert "failing" not in serve_details(ray_cluster)["applications"]  # reverted: nothing half-deployed

    (config / "models.py").write_text(MODELS)
    planned = run_cli(config, "plan")
    assert "last apply failed" in planned.stdout and "-/+ backend \"failing\"" in planned.stdout
    fixed = run_cli(config, "apply", "--auto-approve")
    assert fixed.code == 0, fixed.output
    assert requests.get(ray_cluster.url("/failing"), timeout=10).text == "ok"


def test_apply_json_is_one_object_per_line_plan_events_summary(ray_cluster, tmp_path, applied_dirs):
    """`apply --json` for CI: the plan, each change as it starts and finishes, then a summary; errors on stderr."""
    config = copy_example("quickstart", tmp_path)
    applied_dirs.append(config)
    asked = run_cli(config, "apply", "--json")
    assert asked.code == 1 and asked.stderr.strip() == (
        "Error: --json asks nothing: pass --auto-approve (or apply a saved plan)")

    applied = run_cli(config, "apply", "--json", "--auto-approve")
    assert applied.code == 0, applied.output
    lines = [json.loads(line) for line in applied.stdout.splitlines()]
    assert all(line["format_version"] == 1 for line in lines)
    assert [line["type"] for line in lines] == ["plan"] + ["event"] * (len(lines) - 2) + ["summary"]
    assert lines[0]["plan"]["summary"]["add"] == 2
    changes = [(e["kind"], e.get("address")) for e in lines[1:-1] if e["kind"].startswith("change_")]
    assert changes == [("change_started", "backend.hello"), ("change_finished", "backend.hello"),
                       ("change_started", "endpoint.hello"), ("change_finished", "endpoint.hello")]
    finished = [e for e in lines if e.get("kind") == "change_finished"]
    assert all(e["action"] == "create" and e["seconds"] > 0 and e["total"] == 2 for e in finished)
    summary = lines[-1]
    assert summary["operation"] == "apply" and summary["add"] == 2 and summary["serial"] > 0
    assert requests.get(ray_cluster.url("/hello"), timeout=10).status_code == 200

    unchanged = run_cli(config, "apply", "--json", "--auto-approve")
    kinds = [json.loads(line)["type"] for line in unchanged.stdout.splitlines()]
    assert unchanged.code == 0 and kinds == ["plan", "summary"]
    assert json.loads(unchanged.stdout.splitlines()[-1])["serial"] == summary["serial"]


def test_a_location_serve_cannot_hold_on_a_direct_ingress_cluster_is_one_line(ray_cluster, tmp_path, applied_dirs):
    """Under Serve's direct ingress (the session cluster, as servectl's own head) Serve serves HTTP from the head
    only, whatever location it is given: NoServer would leave an HTTP proxy running. apply says so and records
    nothing, rather than report a location that does not hold."""
    from tests.test_http_locations_e2e import LOCATED, MODELS

    config = write_config(tmp_path / "nowhere", LOCATED, models=MODELS)
    applied_dirs.append(config)
    refused = run_cli(config, "apply", "--auto-approve")
    assert refused.code == 1, refused.output
    assert refused.stderr.strip().splitlines() == [
        "Error: http_location='NoServer' cannot hold on this cluster: Serve runs its proxy 'HeadOnly' (a cluster "
        "started with Serve's direct ingress serves HTTP from the head only); use http_location='HeadOnly', or a "
        "cluster started without RAY_SERVE_ENABLE_DIRECT_INGRESS"
    ], refused.stderr
    assert run_cli(config, "state", "list").stdout.strip() == ""
