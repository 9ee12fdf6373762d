"""The canary-secret test: sensitive values in every place a config may put them, and nowhere else afterwards.

servectl applies, changes, fails, drifts, rolls back and destroys a config on
an embedded cluster it starts itself. Every output of every command, every
file under the config dir, the Ray session's logs and files, the code that
was shipped and a replica's environment are then searched for each secret.
The only places a secret may be are the ones it must be: the backend (which
reports digests of what it got), the 0600 state and history that apply and
rollback read it back from, and the files the user wrote it into.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest
import requests

from servectl.providers.embedded_cluster import free_ports
from tests.conftest import SERVECTL, wait_for_http, write_config

pytestmark = pytest.mark.ray

SECRETS = {
    "arg": "CanaryArgSecret-4d1f",  # init_args, from a file the ignore file keeps out of the bundle
    "kwarg": "CanaryKwargSecret-77ab",  # init_kwargs, from servectl's environment
    "key_one": "CanaryVarSecret-one-19c2",  # user_config, a sensitive var from SERVECTL_VAR_api_key
    "key_two": "CanaryVarSecret-two-8e03",  # the same var changed on the command line
    "env": "CanaryEnvSecret-5b6e",  # env_vars, from the secrets file
    "bad_number": "CanaryNotANumber-0c9d",  # a sensitive var whose value fails conversion
    "aws": "CanaryAwsCredential-a1a1",
    "second_one": "CanarySecondEnv-one-3f3f",  # another env var, from servectl's environment
    "second_two": "CanarySecondEnv-two-6c6c",  # …changed there: the env_vars example  # servectl's own credentials: no backend may see them
}

MAIN = '''
import os
from servectl import Backend, Endpoint, LocalRay, sensitive, var

LocalRay(http_port=int(os.environ["CANARY_HTTP_PORT"]), num_cpus=2)
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "secrets", "values.json")) as handle:
    from_file = __import__("json").load(handle)
api_key = var("api_key", sensitive=True)
retries = var("retries", default=1, sensitive=True)
fail = var("fail", default=False)
keeper = Backend(
    "keeper", "models:Keeper", sensitive(from_file["arg"]),
    init_kwargs={"kwarg": sensitive(os.environ["CANARY_KWARG"]), "retries": retries},
    user_config={"api_key": api_key, "fail": fail, "threshold": 0.5},
    env_vars={"API_TOKEN": sensitive(from_file["env"]), "SECOND": sensitive(os.environ["CANARY_SECOND"]), "MODE": "plain"},
    ray_actor_options={"num_cpus": 0.1},
)
Endpoint("keeper", route="/keeper", backend=keeper)
'''

MODELS = '''
import hashlib, os

TOKEN_AT_IMPORT = os.environ.get("API_TOKEN", "")


def digest(text):
    return hashlib.sha256(str(text).encode()).hexdigest()


class Keeper:
    def __init__(self, arg, kwarg, retries):
        self.arg, self.kwarg = arg, kwarg

    def reconfigure(self, config):
        if config["fail"]:
            raise ValueError("the key " + config["api_key"] + " was refused")
        self.key = config["api_key"]

    def __call__(self, request):
        return {
            "arg": digest(self.arg), "kwarg": digest(self.kwarg), "key": digest(self.key),
            "env": digest(os.environ["API_TOKEN"]), "env_at_import": digest(TOKEN_AT_IMPORT),
            "mode": os.environ.get("MODE"),
            "environ": {name: digest(value) for name, value in os.environ.items()},
        }
'''


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def find_secrets(text: str) -> list[str]:
    return [name for name, secret in SECRETS.items() if secret in text]


def scan_ray_files(private_dir: Path, allowed: set[str]) -> None:
    """Ray's own files (session logs, the runtime-env agent's log, the uploaded working dir) hold no secret."""
    ray_files = [p for p in private_dir.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.name == "runtime_env_agent.log" for p in ray_files)
    assert any("working_dir_files" in str(p) for p in ray_files)
    for path in ray_files:
        try:
            content = path.read_bytes().decode("utf-8", "replace")
        except OSError:
            continue  # sockets and the like
        found = set(find_secrets(content)) - allowed
        assert not found, f"{path} holds {found}"


def test_canary_secrets_appear_nowhere_but_where_they_belong(tmp_path: Path):
    (port,) = free_ports(1)
    config = write_config(tmp_path / "canary", MAIN, models=MODELS)
    (config / "secrets").mkdir()
    (config / "secrets" / "values.json").write_text(json.dumps({"arg": SECRETS["arg"], "env": SECRETS["env"]}))
    (config / ".servectlignore").write_text("# keys stay on this machine\nsecrets/\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVECTL_", "RAY_AUTH"))}
    env.update(
        CANARY_HTTP_PORT=str(port), CANARY_KWARG=SECRETS["kwarg"], CANARY_SECOND=SECRETS["second_one"], SERVECTL_VAR_api_key=SECRETS["key_one"],
        AWS_SECRET_ACCESS_KEY=SECRETS["aws"], NO_COLOR="1", COLUMNS="200",
    )
    outputs: dict[str, str] = {}

    def cli(*args: str, expect: int = 0, **changed_env: str) -> str:
        proc = subprocess.run([SERVECTL, "-C", str(config), *args], capture_output=True, text=True,
                              env={**env, **changed_env}, timeout=300)
        text = proc.stdout + proc.stderr
        assert proc.returncode == expect, f"servectl {' '.join(args)} exited {proc.returncode}: {text}"
        outputs[f"{len(outputs)}: servectl {' '.join(args)}"] = text
        return text

    url = f"http://127.0.0.1:{port}/keeper"
    applied = False
    try:
        assert "The configuration is valid" in cli("validate")
        planned = cli("plan")
        assert "user_config.api_key = (sensitive)" in planned and "env_vars.API_TOKEN = (sensitive)" in planned
        assert json.loads(cli("plan", "--json"))["bundle"]["ignored"] == ["secrets/"]
        cli("plan", "--out", str(config / "prod.tfplan"))  # a saved plan in the config dir: secrets inside
        applied = True
        cli("apply", str(config / "prod.tfplan"))
        answer = wait_for_http(url, timeout=60).json()
        assert answer["arg"] == digest(SECRETS["arg"]) and answer["kwarg"] == digest(SECRETS["kwarg"])
        assert answer["key"] == digest(SECRETS["key_one"]) and answer["env"] == digest(SECRETS["env"])
        assert answer["env_at_import"] == digest(SECRETS["env"])  # set before the backend's module was imported
        assert answer["mode"] == "plain"
        # The replica's environment: its own API_TOKEN, none of servectl's variables or credentials.
        replica_env = answer["environ"]
        # (SERVECTL_PROCESS_TAG is servectl's mark on the processes it started: random, not secret.)
        foreign = [name for name in replica_env if name.startswith(("SERVECTL_", "AWS_", "CANARY_"))]
        assert foreign == ["SERVECTL_PROCESS_TAG"], sorted(replica_env)
        leaked = {name for name, value in replica_env.items() if value in {digest(s) for s in SECRETS.values()}}
        assert leaked == {"API_TOKEN", "SECOND"}, leaked

        # The saved plan is named in the plan and left out of what ships.
        replanned = cli("plan")
        assert "No changes." in replanned and "prod.tfplan (a saved plan)" in replanned and "secrets/ (.servectlignore)" in replanned
        for args in (("show",), ("show", "--json"), ("state", "list"), ("state", "show", "backend.keeper"),
                     ("state", "history"), ("state", "history", "--json"), ("status",), ("status", "--json"),
                     ("drift",), ("drift", "--json")):
            cli(*args)

        # A changed sensitive env var: the old value (from the state) and the new one, in the diff and reasons.
        second = cli("plan", CANARY_SECOND=SECRETS["second_two"])
        assert "env_vars.SECOND = (sensitive) → (sensitive)" in second and "env_vars.SECOND (sensitive) → (sensitive)" in second
        cli("plan", "--json", CANARY_SECOND=SECRETS["second_two"])
        cli("drift", "--json", expect=2, CANARY_SECOND=SECRETS["second_two"])

        # A change of the sensitive var: old and new value in every diff, reason and JSON (the example).
        changed = cli("plan", "--var", f"api_key={SECRETS['key_two']}")
        assert "user_config changed" in changed and "1 to change" in changed
        cli("plan", "--json", "--var", f"api_key={SECRETS['key_two']}")
        cli("plan", "--detailed-exitcode", "--var", f"api_key={SECRETS['key_two']}", expect=2)
        cli("apply", "--auto-approve", "--var", f"api_key={SECRETS['key_two']}")
        assert requests.get(url, timeout=10).json()["key"] == digest(SECRETS["key_two"])
        drifted = json.loads(cli("drift", "--json", expect=2))  # the state has key two, the config key one
        (diff,) = drifted["pending"][0]["diffs"]
        assert diff["path"] == "user_config" and diff["before"]["api_key"] == diff["after"]["api_key"] == "(sensitive)"
        cli("drift", expect=2)

        record = json.loads((config / ".servectl" / "cluster.json").read_text())
        scan_ray_files(Path(record["private_dir"]), allowed=set())

        # A sensitive variable that is no number: one line, without the value.
        bad = cli("plan", "--var", f"retries={SECRETS['bad_number']}", expect=1)
        assert "--var retries=(sensitive): not a valid int" in bad

        # The backend refuses a key with the key in its message: Ray's error reaches servectl's output masked.
        failed = cli("apply", "--auto-approve", "--var", f"api_key={SECRETS['key_two']}", "--var", "fail=true", expect=1)
        assert "was refused" in failed and "(sensitive)" in failed
        cli("show")
        # Reverted: what runs is the state's version again, so its config plans nothing (no empty replace).
        replanned = cli("plan", "--var", f"api_key={SECRETS['key_two']}")
        assert "No changes." in replanned, failed + replanned
        cli("drift", "--var", f"api_key={SECRETS['key_two']}")
        cli("apply", "--auto-approve", "--var", f"api_key={SECRETS['key_two']}")

        # Back to the first applied version (serial of the saved plan's apply), with its own key.
        history = json.loads(cli("state", "history", "--json"))["history"]
        cli("rollback", "--to", str(history[0]["serial"]), "--auto-approve")
        assert requests.get(url, timeout=10).json()["key"] == digest(SECRETS["key_one"])
        # The backend itself wrote key two into its exception, which Ray logged: that one is the backend's doing.
        scan_ray_files(Path(record["private_dir"]), allowed={"key_two"})

        # What shipped: every history entry's bundle and the saved plan's hold neither the secrets dir nor plans.
        history_dir = config / "servectl.state.json.history"
        for entry_path in sorted(history_dir.iterdir()):
            entry = json.loads(entry_path.read_text())
            if entry.get("bundle"):
                names = zipfile.ZipFile(io.BytesIO(base64.b64decode(entry["bundle"]))).namelist()
                assert sorted(names) == [".servectlignore", "main.py", "models.py"], names
    finally:
        if applied:
            cli("destroy", "--auto-approve")

    for name, text in outputs.items():
        assert not find_secrets(text), f"{name} printed {find_secrets(text)}:\n{text}"

    # Every file servectl wrote: only the state and its history hold secrets (to apply and roll back), 0600.
    allowed = {config / "servectl.state.json"}
    for path in config.rglob("*"):
        if not path.is_file():
            continue
        found = find_secrets(path.read_text(errors="replace"))
        if path.parent == history_dir or path in allowed:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
            continue
        if path.name == "prod.tfplan" or path.parent.name == "secrets":
            continue  # where the user put them
        assert not found, f"{path} holds {found}"
    assert not Path(record["private_dir"]).exists()  # destroy removed Ray's temp dir with its logs
