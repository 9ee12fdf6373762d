"""The Terraform-grade workflow through the real CLI: saved plans (more of issue #5 to come)."""
from __future__ import annotations

import json
import os
import re
import stat
import time

import pytest
import requests

from servectl.providers.embedded_cluster import RUNTIME_DIR
from tests.conftest import file_digest, race_applies, run_cli, write_config
from tests.test_cli_e2e import serve_details

pytestmark = pytest.mark.ray

MAIN = '''
from servectl import Backend, Endpoint, LocalRay, var
LocalRay()
replicas = var("replicas", default=1)
hello = Backend("saved", "models:Hello", num_replicas=replicas, ray_actor_options={"num_cpus": 0.1})
Endpoint("saved", route="/saved", backend=hello)
'''
MODELS = '''
class Hello:
    def __call__(self, request):
        return "planned code"
'''


def change_behind_servectls_back(cluster, app: str, **deployment_changes) -> None:
    """What an operator with Serve's own tools does: redeploy the live config with one deployment changed."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    details = serve_details(cluster)
    apps = []
    for name, live in details["applications"].items():
        config = json.loads(json.dumps(live["deployed_app_config"], default=str))
        if name == app:
            config["deployments"][0].update(deployment_changes)
        apps.append(config)
    location = details["proxy_location"]
    _get_global_client().deploy_apps(ServeDeploySchema(
        proxy_location=str(getattr(location, "value", location)), http_options=details["http_options"], applications=apps,
    ))


def replica_servers(config, backend: str) -> set[str]:
    """The replicas (address:port) the front proxy's configuration holds for ``backend`` now."""
    text = (config / RUNTIME_DIR / "haproxy.cfg").read_text()
    return set(re.findall(r"^    server r\S+ (\S+) check$", text.split(f"\nbackend be_{backend}\n", 1)[-1].split("\nbackend ")[0],
                          re.MULTILINE)) if f"\nbackend be_{backend}\n" in text else set()


def kill_one_replica(app: str) -> None:
    """What a crashed replica looks like to Serve: one of ``app``'s replica actors killed; Serve starts another."""
    import ray

    names = sorted(actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
                   if actor["name"].startswith(f"SERVE_REPLICA::{app}#"))
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)


def test_saved_plan_applies_exactly_what_was_planned_or_refuses(ray_cluster, tmp_path, applied_dirs):
    config = write_config(tmp_path / "saved", MAIN, models=MODELS)
    applied_dirs.append(config)
    plan_file = tmp_path / "first.plan"
    planned = run_cli(config, "plan", "--out", str(plan_file))
    assert planned.code == 0, planned.output
    assert f"apply {plan_file}" in planned.stdout
    assert stat.S_IMODE(os.stat(plan_file).st_mode) == 0o600  # it carries the config and its values

    # The code on disk changes after planning: the saved plan still deploys the planned code.
    (config / "models.py").write_text(MODELS.replace("planned code", "edited later"))
    applied = run_cli(config, "apply", str(plan_file))  # no prompt, no re-plan
    assert applied.code == 0, applied.output
    assert "Apply complete! 2 added" in applied.stdout
    assert requests.get(ray_cluster.url("/saved"), timeout=10).text == "planned code"

    # Applied once, the same plan is stale: the state's serial moved.
    again = run_cli(config, "apply", str(plan_file))
    assert again.code == 1
    assert again.stderr.strip().startswith("Error: the state changed since this plan was made (serial 0 → ")

    # The live system changes after planning (someone scales by hand): refused, nothing changes.
    (config / "models.py").write_text(MODELS)
    scale_plan = tmp_path / "scale.plan"
    assert run_cli(config, "plan", "--var", "replicas=2", "--out", str(scale_plan)).code == 0
    change_behind_servectls_back(ray_cluster, "saved", num_replicas=3)
    state_before = file_digest(config / "servectl.state.json")
    refused = run_cli(config, "apply", str(scale_plan))
    assert refused.code == 1
    assert refused.stderr.strip() == (
        "Error: the live system changed since this plan was made (Serve's applications, the cluster's nodes or "
        "the front proxy differ from what the plan saw); run plan again"
    )
    assert file_digest(config / "servectl.state.json") == state_before

    # A fresh saved plan applies, though Serve replaced a replica after it was made: Serve's own doing (a crash,
    # autoscaling), which the front proxy follows, is not a change behind servectl's back.
    assert run_cli(config, "plan", "--var", "replicas=2", "--out", str(scale_plan)).code == 0
    held = replica_servers(config, "saved")
    kill_one_replica("saved")
    deadline = time.monotonic() + 90
    while replica_servers(config, "saved") in (held, set()) or len(replica_servers(config, "saved")) < 3:
        assert time.monotonic() < deadline, "the front proxy never followed the replaced replica"
        time.sleep(0.5)
    applied = run_cli(config, "apply", str(scale_plan))
    assert applied.code == 0, applied.output
    deployment = serve_details(ray_cluster)["applications"]["saved"]["deployments"]["saved"]
    assert len(deployment["replicas"]) == 2

    # Terraform's `plan -destroy`: what destroy would remove, saved and applied like any plan.
    destroy_plan = tmp_path / "destroy.plan"
    planned = run_cli(config, "plan", "--destroy", "--detailed-exitcode", "--out", str(destroy_plan))
    assert planned.code == 2, planned.output
    assert "# backend.saved will be destroyed" in planned.stdout and "0 to add, 0 to change, 0 to replace, 2 to destroy" in planned.stdout
    assert "saved" in serve_details(ray_cluster)["applications"]  # planning changed nothing
    destroyed = run_cli(config, "apply", str(destroy_plan))
    assert destroyed.code == 0, destroyed.output
    assert "Destroy complete! 0 added, 0 changed, 0 replaced, 2 destroyed" in destroyed.stdout
    assert "saved" not in serve_details(ray_cluster)["applications"]
    assert run_cli(config, "plan", "--destroy", "--detailed-exitcode").code == 0  # nothing left to destroy


def test_bad_plan_files_are_one_line_errors(ray_cluster, tmp_path):
    config = write_config(tmp_path / "badplans", MAIN, models=MODELS)
    garbage = tmp_path / "garbage.plan"
    garbage.write_text("not a plan")
    cases = {
        str(garbage): f"Error: {garbage}: not a servectl plan file (unreadable or not JSON)",
        str(tmp_path / "missing.plan"): f"Error: {tmp_path / 'missing.plan'}: no such plan file",
    }
    newer = tmp_path / "newer.plan"
    newer.write_text(json.dumps({"format": "servectl-plan", "format_version": 99}))
    cases[str(newer)] = (f"Error: {newer}: plan format 99 was written by a newer servectl (this one reads up to 1); "
                         "plan again with this servectl")
    for path, message in cases.items():
        result = run_cli(config, "apply", path)
        assert (result.code, result.stderr.strip()) == (1, message)
    with_var = run_cli(config, "apply", str(garbage), "--var", "replicas=3")
    assert with_var.stderr.strip() == (
        "Error: --var cannot be used with a saved plan: its variables were fixed when it was planned"
    )
    assert not (config / "servectl.state.json").exists()


def drift_report(config, *args: str) -> tuple[int, dict]:
    result = run_cli(config, "drift", "--json", *args)
    assert result.code in (0, 2), result.output
    return result.code, json.loads(result.stdout)


def test_drift_is_told_apart_from_pending_config_and_refresh_only_accepts_it(ray_cluster, tmp_path, applied_dirs):
    from ray import serve

    config = write_config(tmp_path / "drifting", MAIN, models=MODELS)
    applied_dirs.append(config)
    assert run_cli(config, "apply", "--auto-approve").code == 0
    assert drift_report(config) == (0, {"format_version": 1, "clean": True, "drift": [], "pending": []})

    # (a) drift: someone scales the deployment by hand.
    change_behind_servectls_back(ray_cluster, "saved", num_replicas=3)
    code, report = drift_report(config)
    assert code == 2 and report["pending"] == []
    assert report["drift"] == [
        {"address": "backend.saved", "change": "changed", "path": "num_replicas", "recorded": 1, "live": 3}
    ]
    refresh = run_cli(config, "plan", "--refresh-only", "--detailed-exitcode")
    assert refresh.code == 2
    assert "backend.saved: num_replicas is 3 live, recorded 1" in refresh.stdout
    state_before = file_digest(config / "servectl.state.json")
    assert run_cli(config, "plan", "--refresh-only").code == 0 and file_digest(config / "servectl.state.json") == state_before

    accepted = run_cli(config, "apply", "--refresh-only", "--auto-approve")
    assert accepted.code == 0, accepted.output
    assert json.loads((config / "servectl.state.json").read_text())["resources"]["backend.saved"]["attributes"]["num_replicas"] == 3

    # (b) pending: now the config (1 replica) differs from the state (3), and nothing drifts.
    code, report = drift_report(config)
    assert code == 2 and report["drift"] == []
    assert [(c["address"], c["action"]) for c in report["pending"]] == [("backend.saved", "update")]
    assert report["pending"][0]["diffs"] == [{"path": "num_replicas", "before": 3, "after": 1}]
    assert run_cli(config, "apply", "--auto-approve").code == 0
    assert drift_report(config)[0] == 0

    # An application deleted by hand is drift too; accepting it lets the next apply create it again.
    connect_and_delete = serve_details(ray_cluster)  # connects this process as a driver
    assert "saved" in connect_and_delete["applications"]
    serve.delete("saved")
    code, report = drift_report(config)
    assert code == 2 and {"address": "backend.saved", "change": "deleted", "path": None, "recorded": None, "live": None} in report["drift"]
    assert "backend.saved was deleted outside servectl" in run_cli(config, "drift").stdout
    assert run_cli(config, "apply", "--refresh-only", "--auto-approve").code == 0
    recreated = run_cli(config, "apply", "--auto-approve")
    assert recreated.code == 0 and "+ backend \"saved\"" in recreated.stdout
    assert requests.get(ray_cluster.url("/saved"), timeout=10).text == "planned code"
    assert drift_report(config)[0] == 0

    # An unreachable cluster is an error, never "everything was deleted".
    state_path = config / "servectl.state.json"
    applied_state = state_path.read_text()
    gone = json.loads(applied_state)
    gone["provider"]["address"] = "127.0.0.1:9"
    state_path.write_text(json.dumps(gone))
    try:
        result = run_cli(config, "drift", "--json")
        assert (result.code, result.stdout) == (1, "")
        assert "cannot reach the Ray cluster at 127.0.0.1:9" in result.stderr
    finally:
        state_path.write_text(applied_state)


def test_history_and_rollback_need_no_old_files(ray_cluster, tmp_path, applied_dirs):
    config = write_config(tmp_path / "versions", MAIN, models=MODELS.replace("planned code", "version one"))
    applied_dirs.append(config)
    assert run_cli(config, "apply", "--auto-approve").code == 0
    (config / "models.py").write_text(MODELS.replace("planned code", "version two"))
    assert run_cli(config, "apply", "--var", "replicas=2", "--auto-approve").code == 0
    assert requests.get(ray_cluster.url("/saved"), timeout=10).text == "version two"

    listed = json.loads(run_cli(config, "state", "history", "--json").stdout)["history"]
    assert [(e["operation"], e["summary"]) for e in listed] == [
        ("apply", "2 added, 0 changed, 0 replaced, 0 destroyed"),
        ("apply", "0 added, 0 changed, 1 replaced, 0 destroyed"),
    ]
    first, second = listed[0]["serial"], listed[1]["serial"]
    table = run_cli(config, "state", "history")
    assert "serial" in table.stdout and "version" not in table.stdout and str(second) in table.stdout
    history_dir = config / "servectl.state.json.history"
    assert stat.S_IMODE(os.stat(history_dir).st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in history_dir.iterdir())

    # The code on disk is gone: rollback brings back version one, code and replica count, from the history.
    (config / "models.py").unlink()
    rolled = run_cli(config, "rollback", "--auto-approve")
    assert rolled.code == 0, rolled.output
    assert "-/+ backend \"saved\"" in rolled.stdout and "num_replicas = 2 → 1" in rolled.stdout
    assert "Rollback complete!" in rolled.stdout
    assert requests.get(ray_cluster.url("/saved"), timeout=10).text == "version one"
    assert len(serve_details(ray_cluster)["applications"]["saved"]["deployments"]["saved"]["replicas"]) == 1
    after = json.loads(run_cli(config, "state", "history", "--json").stdout)["history"]
    assert after[-1]["operation"] == f"rollback to {first}"

    # Any applied version, by serial; an unknown serial is one error line.
    assert run_cli(config, "rollback", "--to", str(second), "--auto-approve").code == 0
    assert requests.get(ray_cluster.url("/saved"), timeout=10).text == "version two"
    unknown = run_cli(config, "rollback", "--to", "999")
    assert unknown.code == 1 and unknown.stderr.strip().startswith("Error: no applied version with serial 999 in the history")


THREE = '''
from servectl import Backend, Endpoint, LocalRay
LocalRay()
small = {"num_cpus": 0.1}
for name, code in (("a_first", "models:Good"), ("b_second", "models:Good"), ("c_third", "models:Third")):
    Endpoint(name, route="/" + name, backend=Backend(name, code, ray_actor_options=small))
'''
THREE_MODELS = '''
import time

class Good:
    def __call__(self, request):
        return "good"

class Third:
    def __init__(self):
        {third_init}

    def __call__(self, request):
        return "third"
'''


def test_change_k_of_n_fails_state_records_the_rest_and_plan_shows_what_is_left(ray_cluster, tmp_path, applied_dirs):
    config = write_config(tmp_path / "partial", THREE,
                          models=THREE_MODELS.replace("{third_init}", "raise RuntimeError('third cannot start')"))
    applied_dirs.append(config)
    result = run_cli(config, "apply", "--auto-approve", "--timeout", "120")
    assert result.code == 1
    assert "2 of 6 changes applied and recorded" in result.stderr  # backends a, b; then c (3rd) failed
    state = json.loads((config / "servectl.state.json").read_text())["resources"]
    assert {a: r["status"] for a, r in state.items()} == {
        "backend.a_first": "applied", "backend.b_second": "applied", "backend.c_third": "failed"}
    assert "third cannot start" in state["backend.c_third"]["error"]
    planned = run_cli(config, "plan", "--json")
    left = {(c["address"], c["action"]) for c in json.loads(planned.stdout)["changes"] if c["action"] != "no-op"}
    assert left == {("backend.c_third", "replace"), ("endpoint.a_first", "create"), ("endpoint.b_second", "create"),
                    ("endpoint.c_third", "create")}


def test_kill_9_mid_apply_leaves_a_lock_to_force_unlock_and_a_true_state(ray_cluster, tmp_path, applied_dirs):
    import signal
    import subprocess

    from tests.conftest import SERVECTL

    config = write_config(tmp_path / "killed", THREE, models=THREE_MODELS.replace("{third_init}", "time.sleep(8)"))
    applied_dirs.append(config)
    process = subprocess.Popen([SERVECTL, "-C", str(config), "apply", "--auto-approve"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "NO_COLOR": "1"})
    state_path = config / "servectl.state.json"
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until the slow third backend is being created
        if state_path.exists() and json.loads(state_path.read_text())["resources"].get("backend.c_third", {}).get("status") == "applying":
            break
        time.sleep(0.2)
    else:
        process.kill()
        raise AssertionError(f"apply never reached the third backend: {process.communicate()[0]}")
    time.sleep(1)
    process.send_signal(signal.SIGKILL)
    process.wait()

    state = json.loads(state_path.read_text())  # valid JSON, true to what was done
    assert {a: r["status"] for a, r in state["resources"].items()} == {
        "backend.a_first": "applied", "backend.b_second": "applied", "backend.c_third": "applying"}
    started = time.monotonic()
    blocked = run_cli(config, "apply", "--auto-approve", "--lock-timeout", "10m")
    assert blocked.code == 1
    assert time.monotonic() - started < 60  # a dead holder's lock is not waited for: only force-unlock clears it
    message = blocked.stderr.strip()
    assert "which is no longer running" in message and "servectl force-unlock" in message, message
    lock_id = message.rsplit("force-unlock ", 1)[1].split("`")[0]
    assert run_cli(config, "force-unlock", "wrong-id").code == 1
    assert run_cli(config, "force-unlock", lock_id).code == 0
    planned = run_cli(config, "plan")
    assert "the last apply stopped before this change finished" in planned.stdout
    (config / "models.py").write_text(THREE_MODELS.replace("{third_init}", "pass"))
    finished = run_cli(config, "apply", "--auto-approve")
    assert finished.code == 0, finished.output  # the app the crash left in Serve is no stranger
    assert requests.get(ray_cluster.url("/c_third"), timeout=10).text == "third"

    # Two applies racing with --lock-timeout: the second waits for the first's lock, then plans against the
    # state it left (nothing to do); without it the second fails at once (the S3 test races both ways).
    (config / "models.py").write_text(THREE_MODELS.replace("{third_init}", "time.sleep(5)").replace('"third"', '"3rd"'))
    results = race_applies(config, "--lock-timeout", "3m")
    assert [result.code for result in results] == [0, 0], results
    waited = [result for result in results if "Acquiring the state lock" in result.stdout]
    assert len(waited) == 1 and "No changes." in waited[0].stdout, results
    assert requests.get(ray_cluster.url("/c_third"), timeout=10).text == "3rd"


SECRET_MAIN = '''
from servectl import Backend, Endpoint, LocalRay, sensitive, var
LocalRay()
key = var("api_key", default="s3cret-one", sensitive=True)
b = Backend("secretive", "models:Keyed", user_config={"api_key": key, "threshold": 0.5},
            env_vars={"API_TOKEN": sensitive("t0ken-value")}, ray_actor_options={"num_cpus": 0.1})
Endpoint("secretive", route="/secretive", backend=b)
'''
SECRET_MODELS = '''
import hashlib, os

class Keyed:
    def reconfigure(self, config):
        self.key = config["api_key"]

    def __call__(self, request):
        digest = lambda text: hashlib.sha256(text.encode()).hexdigest()
        return {"key": digest(self.key), "token": digest(os.environ["API_TOKEN"])}
'''


def test_sensitive_values_reach_the_backend_and_are_never_printed(ray_cluster, tmp_path, applied_dirs):
    import hashlib

    config = write_config(tmp_path / "secrets", SECRET_MAIN, models=SECRET_MODELS)
    applied_dirs.append(config)
    secrets = ("s3cret-one", "s3cret-two", "t0ken-value")
    outputs = []
    planned = run_cli(config, "plan")
    outputs += [planned.output, run_cli(config, "plan", "--json").output]
    assert "user_config.api_key = (sensitive)" in planned.stdout and "env_vars.API_TOKEN = (sensitive)" in planned.stdout
    applied = run_cli(config, "apply", "--auto-approve")
    assert applied.code == 0, applied.output
    outputs.append(applied.output)
    digest = lambda text: hashlib.sha256(text.encode()).hexdigest()
    assert requests.get(ray_cluster.url("/secretive"), timeout=10).json() == {"key": digest("s3cret-one"), "token": digest("t0ken-value")}

    for args in (("show",), ("show", "--json"), ("state", "show", "backend.secretive"), ("drift",), ("drift", "--json")):
        result = run_cli(config, *args)
        assert result.code == 0, result.output
        outputs.append(result.output)
    changed = run_cli(config, "plan", "--var", "api_key=s3cret-two")
    assert "user_config changed" in changed.stdout and "1 to change" in changed.stdout
    outputs.append(changed.output)
    assert run_cli(config, "apply", "--var", "api_key=s3cret-two", "--auto-approve").code == 0
    assert requests.get(ray_cluster.url("/secretive"), timeout=10).json()["key"] == digest("s3cret-two")
    for output in outputs:
        assert not any(secret in output for secret in secrets), output

    state_path = config / "servectl.state.json"
    assert "s3cret-two" in state_path.read_text()  # kept to apply it, readable by the owner only
    assert stat.S_IMODE(os.stat(state_path).st_mode) == 0o600


TWO = '''
from servectl import Backend, Endpoint, LocalRay, var
LocalRay()
n = var("replicas", default=1)
small = {"num_cpus": 0.1}
Endpoint("one", route="/one", backend=Backend("one", "models:Good", num_replicas=n, ray_actor_options=small))
Endpoint("two", route="/two", backend=Backend("two", "models:Good", num_replicas=n, ray_actor_options=small))
'''


def test_target_plans_only_the_named_resource_and_what_it_needs_with_a_warning(ray_cluster, tmp_path, applied_dirs):
    config = write_config(tmp_path / "targeted", TWO, models=THREE_MODELS.replace("{third_init}", "pass"))
    applied_dirs.append(config)
    first = run_cli(config, "apply", "--target", "endpoint.one", "--auto-approve")
    assert first.code == 0, first.output
    assert "Warning: resource targeting is in effect" in first.stderr
    assert "Plan: 2 to add" in first.stdout  # the endpoint and the backend it routes to
    assert sorted(json.loads((config / "servectl.state.json").read_text())["resources"]) == ["backend.one", "endpoint.one"]
    assert requests.get(ray_cluster.url("/one"), timeout=10).text == "good"

    scoped = json.loads(run_cli(config, "plan", "--var", "replicas=2", "--target", "backend.two", "--json").stdout)
    assert {c["address"] for c in scoped["changes"] if c["action"] != "no-op"} == {"backend.two"}
    assert scoped["targets"] == ["backend.two"]
    unknown = run_cli(config, "plan", "--target", "backend.nope")
    assert unknown.code == 1 and "--target backend.nope: no such resource in the config or the state" in unknown.stderr
    everything = run_cli(config, "plan", "--json")
    assert {c["address"] for c in json.loads(everything.stdout)["changes"] if c["action"] != "no-op"} == {"backend.two", "endpoint.two"}
