"""S3 remote state through the real CLI on real Ray, with moto_server as S3."""
from __future__ import annotations

import json
import os
import stat

import pytest
import requests

from tests.conftest import copy_example, race_applies, run_cli, write_config
from tests.test_s3_state import new_bucket

pytestmark = pytest.mark.ray

MAIN = '''
from servectl import Backend, Endpoint, LocalRay, S3State, var
LocalRay()
S3State(bucket="{bucket}", key="teams/serving/state.json", region="us-east-1", encrypt=True)
replicas = var("replicas", default=1)
hello = Backend("{name}", "models:Hello", num_replicas=replicas, ray_actor_options={{"num_cpus": 0.1}})
Endpoint("{name}", route="/{name}", backend=hello)
'''
MODELS = '''
import time

class Hello:
    def __init__(self):
        time.sleep({init_s})

    def __call__(self, request):
        return "{text}"
'''
KEY = "teams/serving/state.json"


def s3_keys(moto_server, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in moto_server.client("s3").list_objects_v2(Bucket=bucket).get("Contents", []))


def history(config) -> list[dict]:
    listed = run_cli(config, "state", "history", "--json")
    assert listed.code == 0, listed.output
    return json.loads(listed.stdout)["history"]


def test_apply_plan_history_and_rollback_keep_the_state_in_s3(
    monkeypatch, moto_server, ray_cluster, tmp_path, applied_dirs  # monkeypatch first: undone after the destroy
):
    bucket = new_bucket(moto_server)
    # The README's example, pointed at the test bucket the way CI would: SERVECTL_VAR_* for every command.
    monkeypatch.setenv("SERVECTL_VAR_state_bucket", bucket)
    monkeypatch.setenv("SERVECTL_VAR_state_region", "us-east-1")
    config = copy_example("remote_state", tmp_path / "remote")
    key = "prod/serving.json"
    applied_dirs.append(config)
    applied = run_cli(config, "apply", "--auto-approve")
    assert applied.code == 0, applied.output
    assert requests.get(ray_cluster.url("/hello"), timeout=10).text == "Hello, world!"
    assert not (config / "servectl.state.json").exists()  # nothing local but the pointer
    pointer = config / "servectl.backend.json"
    assert stat.S_IMODE(os.stat(pointer).st_mode) == 0o600
    assert json.loads(pointer.read_text())["state_backend"]["bucket"] == bucket
    keys = s3_keys(moto_server, bucket)
    assert key in keys and key + ".lock" not in keys  # the lock is gone once apply ends
    s3 = moto_server.client("s3")
    assert s3.head_object(Bucket=bucket, Key=key)["ServerSideEncryption"] == "AES256"
    state = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert sorted(state["resources"]) == ["backend.hello", "endpoint.hello"]

    unchanged = run_cli(config, "plan", "--detailed-exitcode")
    assert unchanged.code == 0, unchanged.output
    shown = run_cli(config, "state", "list")
    assert shown.stdout.split() == ["backend.hello", "endpoint.hello"]

    (config / "main.py").write_text((config / "main.py").read_text().replace('"Hello"', '"Bonjour"'))
    assert run_cli(config, "apply", "--auto-approve").code == 0
    assert requests.get(ray_cluster.url("/hello"), timeout=10).text == "Bonjour, world!"
    versions = s3.list_object_versions(Bucket=bucket, Prefix=key)["Versions"]
    assert len([v for v in versions if v["Key"] == key]) >= 4  # every state write is a kept version
    entries = history(config)
    assert [e["operation"] for e in entries] == ["apply", "apply"]
    assert any(k.startswith(key + ".history/") for k in s3_keys(moto_server, bucket))

    # No config files at all: rollback finds the S3 state through the pointer and the code in its history.
    kept = {name: (config / name).read_text() for name in ("main.py", "models.py")}
    for name in kept:
        (config / name).unlink()
    rolled = run_cli(config, "rollback", "--auto-approve")
    assert rolled.code == 0, rolled.output
    assert requests.get(ray_cluster.url("/hello"), timeout=10).text == "Hello, world!"
    assert [e["operation"] for e in history(config)][-1] == f"rollback to {entries[0]['serial']}"
    for name, text in kept.items():  # back, so the fixture can destroy through the config
        (config / name).write_text(text)


def test_two_concurrent_applies_exactly_one_wins_and_nothing_is_lost(moto_server, ray_cluster, tmp_path, applied_dirs):
    bucket = new_bucket(moto_server)
    # A slow constructor keeps the winner's lock held while the other process reaches for it.
    config = write_config(
        tmp_path / "race", MAIN.format(bucket=bucket, name="race"), models=MODELS.format(init_s=8, text="raced")
    )
    applied_dirs.append(config)
    results = race_applies(config)
    codes = sorted(result.code for result in results)
    assert codes == [0, 1], results
    loser = next(result.stderr for result in results if result.code == 1)
    print("the losing apply said:", loser.strip())
    assert loser.strip().startswith(f"Error: state s3://{bucket}/{KEY} is locked by "), loser
    assert "for 'apply', lock ID " in loser

    # Nothing lost: one history entry, no lock left behind, the state matches the live system.
    assert [e["operation"] for e in history(config)] == ["apply"]
    assert KEY + ".lock" not in s3_keys(moto_server, bucket)
    assert requests.get(ray_cluster.url("/race"), timeout=10).text == "raced"
    settled = run_cli(config, "plan", "--detailed-exitcode")
    assert settled.code == 0, settled.output
    assert run_cli(config, "drift").code == 0

    # With --lock-timeout (Terraform's -lock-timeout) the second waits for the lock, then plans against the state
    # the first left: both succeed, the second with nothing to do.
    (config / "models.py").write_text(MODELS.format(init_s=8, text="raced again"))
    results = race_applies(config, "--lock-timeout", "3m")
    assert [result.code for result in results] == [0, 0], results
    waited = [result for result in results if "Acquiring the state lock" in result.stdout]
    assert len(waited) == 1, results
    assert "No changes." in waited[0].stdout and f"s3://{bucket}/{KEY} is locked by " in waited[0].stdout
    assert [e["operation"] for e in history(config)] == ["apply", "apply"]
    assert KEY + ".lock" not in s3_keys(moto_server, bucket)
    assert requests.get(ray_cluster.url("/race"), timeout=10).text == "raced again"


def test_a_local_state_is_migrated_to_s3_with_its_history(moto_server, ray_cluster, tmp_path, applied_dirs):
    bucket = new_bucket(moto_server)
    local_main = MAIN.format(bucket=bucket, name="moved").replace(
        'S3State(bucket="%s", key="teams/serving/state.json", region="us-east-1", encrypt=True)\n' % bucket, ""
    )
    config = write_config(tmp_path / "moved", local_main, models=MODELS.format(init_s=0, text="moved"))
    applied_dirs.append(config)
    assert run_cli(config, "apply", "--auto-approve").code == 0
    local_state = (config / "servectl.state.json").read_text()

    # The config now names S3, which is empty: every command says to migrate rather than plan a second copy.
    (config / "main.py").write_text(MAIN.format(bucket=bucket, name="moved"))
    refused = run_cli(config, "plan")
    assert refused.code == 1
    assert refused.stderr.strip() == (
        f"Error: the config keeps the state in s3://{bucket}/{KEY}, which is empty, but "
        f"{config / 'servectl.state.json'} holds one: run `servectl state migrate` to move it (and its history) there"
    )
    assert s3_keys(moto_server, bucket) == []

    moved = run_cli(config, "state", "migrate")
    assert moved.code == 0, moved.output
    assert f"State moved to s3://{bucket}/{KEY}" in moved.stdout
    s3_state = moto_server.client("s3").get_object(Bucket=bucket, Key=KEY)["Body"].read().decode()
    assert json.loads(s3_state) == json.loads(local_state)
    assert not (config / "servectl.state.json").exists() and (config / "servectl.state.json.migrated").exists()
    assert [e["operation"] for e in history(config)] == ["apply"]
    assert run_cli(config, "plan", "--detailed-exitcode").code == 0

    again = run_cli(config, "state", "migrate")
    assert again.code == 1 and again.stderr.strip().startswith("Error: there is no local state to migrate")
