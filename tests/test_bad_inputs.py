"""The bad-input table: every user mistake and live fault is one clear line, exit 1, and changes nothing.

One config is applied on the session cluster; each case runs the real CLI in
a copy of it (state, history and all) after breaking one thing: the config
modules, the command line, the state file, a saved plan, or something live.
Each must exit 1 with exactly one line on stderr — ``Error: `` then the
place and what to do — no traceback anywhere, and the state file's bytes
unchanged (or still absent).
"""
from __future__ import annotations

import http.server
import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from servectl.providers.embedded_cluster import free_ports
from tests.conftest import file_digest, run_cli, write_config

GOOD = """
from servectl import Backend, Endpoint, LocalRay, var
LocalRay()
a = Backend("bad_a", "models:M", num_replicas=var("replicas", default=1), ray_actor_options={"num_cpus": 0.1})
b = Backend("bad_b", "models:M", ray_actor_options={"num_cpus": 0.1})
Endpoint("bad", route="/bad", traffic={a: 0.5, b: 0.5})
"""
# The GOOD config's endpoint on one backend, and a Rollout of it (for the rollout cases).
SINGLE = GOOD.replace('Endpoint("bad", route="/bad", traffic={a: 0.5, b: 0.5})', 'Endpoint("one", route="/bad", backend=a)')
ROLLOUT = "from servectl import Rollout, ErrorRate\nRollout(endpoint={endpoint}, new={new}, steps=[0.1, 1.0]{extra})\n"
MODELS = "class M:\n    def __call__(self, request):\n        return 'ok'\n"
MULTIPLEXED = (
    "from ray import serve\nclass Multi:\n    @serve.multiplexed\n    async def load(self, model_id):\n        return model_id\n"
    "    async def __call__(self, request):\n        return await self.load(serve.get_multiplexed_model_id())\n"
)
STATE = "servectl.state.json"


@dataclass
class Case:
    name: str
    args: list[str]
    expect: str  # in the one error line
    main: Optional[str] = None  # replaces main.py
    models: Optional[str] = None  # replaces models.py
    prepare: Optional[Callable[[Path], None]] = None  # breaks something else in the copy
    fresh: bool = False  # run in a config dir with no state (nothing applied there yet)


def _swap(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new)


def _edit_state(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def prepare(directory: Path) -> None:
        path = directory / STATE
        body = json.loads(path.read_text())
        change(body)
        path.write_text(json.dumps(body))
    return prepare


def _truncate(directory: Path) -> None:
    path = directory / STATE
    path.write_bytes(path.read_bytes()[:120])


def _open_to_others(directory: Path) -> None:
    os.chmod(directory / STATE, 0o644)


def _saved_plan(after: Callable[[Path], None]) -> Callable[[Path], None]:
    def prepare(directory: Path) -> None:
        (directory / "main.py").write_text(_swap("default=1", "default=2"))
        saved = run_cli(directory, "plan", "--out", str(directory / "p.plan"))
        assert saved.code == 0, saved.output
        after(directory)
    return prepare


def _bump_serial(directory: Path) -> None:
    _edit_state(lambda body: body.update(serial=body["serial"] + 1))(directory)


def _new_lineage(directory: Path) -> None:
    _edit_state(lambda body: body.update(lineage="0" * 32))(directory)


def _tamper(directory: Path) -> None:
    path = directory / "p.plan"
    body = json.loads(path.read_text())
    body["plan"]["changes"][0]["after"]["num_replicas"] = 50
    path.write_text(json.dumps(body))


def _hold_lock(directory: Path) -> None:
    from servectl.state.local import LocalStateStore

    LocalStateStore.in_dir(str(directory)).lock("apply")  # left held: a crashed apply's lock


def cases(closed_port: int, failing_dashboard: str) -> list[Case]:
    return [
        # --- config modules -----------------------------------------------------------------------------------
        Case("syntax error", ["plan"], "main.py:6: syntax error", main=_swap('route="/bad"', 'route="/bad"(')),
        Case("syntax error in backend code", ["plan"], "models.py:2: syntax error in the code of backend 'bad_a'",
             models="class M:\n    def __call__(self, request)\n        return 'ok'\n"),
        Case("backend code names nothing", ["apply", "--auto-approve"], "models.py defines no 'M' (it defines: N)",
             models="class N:\n    pass\n"),
        Case("import error in config", ["plan"], "main.py:1: ModuleNotFoundError: No module named 'nonexistent_mod'",
             main="import nonexistent_mod\n" + GOOD),
        Case("name error", ["plan"], "main.py:6: NameError: name 'c' is not defined",
             main=_swap("traffic={a: 0.5, b: 0.5}", "traffic={a: 0.5, c: 0.5}")),
        Case("wrong type", ["plan"], "backend 'bad_b': num_replicas",
             main=_swap('b = Backend("bad_b", "models:M", ', 'b = Backend("bad_b", "models:M", num_replicas="three", ')),
        Case("weights sum", ["plan"], "traffic weights sum to 1.2; they must sum to 1",
             main=_swap("{a: 0.5, b: 0.5}", "{a: 0.7, b: 0.5}")),
        Case("negative weight", ["apply", "--auto-approve"], "weight for 'bad_b' must be a non-negative number",
             main=_swap("{a: 0.5, b: 0.5}", "{a: 1.5, b: -0.5}")),
        Case("a weight of 400 digits", ["plan"],
             "weight for 'bad_b' must be a non-negative number, got 1000000000000000000000000000000000000000000000000000000"
             "0000000000000000000000000… (321 more characters)",
             main=_swap("{a: 0.5, b: 0.5}", "{a: 0.5, b: 10**400}")),
        Case("a delay of 400 digits", ["plan"], "deregistration_delay_s: Input should be a valid number (got 10000",
             main=_swap('traffic={a: 0.5, b: 0.5})', 'traffic={a: 0.5, b: 0.5}, deregistration_delay_s=10**400)')),
        Case("unknown backend", ["plan"], "unknown backend 'nope'",
             main=_swap("traffic={a: 0.5, b: 0.5}", 'backend="nope"')),
        Case("route clash", ["plan"], "route '/bad' is already used by endpoint 'bad'",
             main=GOOD + 'Endpoint("other", route="/bad", backend=b)\n'),
        Case("route without slash", ["plan"], "route 'bad' must be a path starting with '/'", main=_swap('route="/bad"', 'route="bad"')),
        Case("duplicate backend", ["plan"], "backend 'bad_b' is declared twice",
             main=GOOD + 'Backend("bad_b", "models:M")\n'),
        Case("misspelt setting", ["plan"], "ray_actor_option: unknown setting (check the spelling)",
             main=_swap("ray_actor_options={\"num_cpus\": 0.1})\nEndpoint", "ray_actor_option={\"num_cpus\": 0.1})\nEndpoint")),
        Case("unschedulable resources", ["apply", "--auto-approve"], "cannot be placed on the cluster",
             main=_swap('{"num_cpus": 0.1})\nEndpoint', '{"num_cpus": 0.1, "num_gpus": 1}, num_replicas=3)\nEndpoint')),
        Case("fractional gpu above one", ["plan"], "num_gpus above 1 must be a whole number",
             main=_swap('{"num_cpus": 0.1})\nEndpoint', '{"num_cpus": 0.1, "num_gpus": 1.5})\nEndpoint')),
        Case("conflicting options", ["plan"], "give num_replicas or autoscaling={...}, not both",
             main=_swap('b = Backend("bad_b", "models:M", ',
                        'b = Backend("bad_b", "models:M", num_replicas=2, autoscaling={"max_replicas": 3}, ')),
        Case("autoscaling range", ["plan"], "max_replicas 2 is below min_replicas 4",
             main=_swap('b = Backend("bad_b", "models:M", ',
                        'b = Backend("bad_b", "models:M", autoscaling={"min_replicas": 4, "max_replicas": 2}, ')),
        Case("pip and conda", ["plan"], "give pip=[...] or conda=..., not both",
             main=_swap('b = Backend("bad_b", "models:M", ', 'b = Backend("bad_b", "models:M", pip=["x==1"], conda="env", ')),
        Case("second provider", ["plan"], "a second provider block", main=GOOD + "LocalRay()\n"),
        Case("bad S3 bucket name", ["plan"], "S3State: bucket: not a valid S3 bucket name",
             main=GOOD.replace("LocalRay()", "LocalRay()\nfrom servectl import S3State\n"
                               "S3State(bucket='Bad_Bucket', key='s.json', region='us-east-1')")),
        Case("aws ports clash", ["plan"], "proxy_port and serve_port are both 8001",
             main="from servectl import AwsRay, NodeType, LoadBalancer\nAwsRay(region='us-east-1', "
                  "head=NodeType('head', instance_type='m6i.large', resources={'CPU': 2}), "
                  "node_types=[NodeType('cpu', instance_type='m6i.large', resources={'CPU': 2})], "
                  "load_balancer=LoadBalancer(allowed_cidrs=['203.0.113.0/24']), proxy_port=8001)\n"),
        Case("aws open to a bad cidr", ["plan"], "'203.0.113.0/33' is not a CIDR block",
             main="from servectl import AwsRay, NodeType, LoadBalancer\nAwsRay(region='us-east-1', "
                  "head=NodeType('head', instance_type='m6i.large', resources={'CPU': 2}), "
                  "node_types=[NodeType('cpu', instance_type='m6i.large', resources={'CPU': 2})], "
                  "load_balancer=LoadBalancer(allowed_cidrs=['203.0.113.0/33']))\n"),
        Case("http location change", ["plan"], "http_location changed ('HeadOnly' → 'EveryNode') while resources are deployed",
             main=GOOD.replace("LocalRay()", 'LocalRay(http_location="EveryNode")')),
        Case("ingress change", ["plan"], "ingress changed ('direct' → 'python') while resources are deployed",
             main=GOOD.replace("LocalRay()", 'LocalRay(ingress="python")')),
        Case("an ingress servectl does not have", ["plan"], "ingress: Input should be 'python' or 'direct'",
             main=GOOD.replace("LocalRay()", 'LocalRay(ingress="haproxy")')),
        Case("direct ingress on every node", ["plan"], "ingress='direct' needs http_location='HeadOnly'",
             main=GOOD.replace("LocalRay()", 'LocalRay(ingress="direct", http_location="EveryNode")')),
        Case("cyclic composition", ["plan"],
             "cyclic composition: backend 'bad_a' calls endpoint 'bad' (models.py:6), which routes to backend 'bad_a'",
             models="import servectl\n\n\nclass M:\n    def __init__(self):\n        self.again = servectl.get_handle('bad')\n\n"
                    "    def __call__(self, request):\n        return 'ok'\n"),
        Case("rollout of a split endpoint", ["plan"], "endpoint 'bad' splits its traffic (bad_a, bad_b)",
             main=GOOD + ROLLOUT.format(endpoint="'bad'", new="a", extra="")),
        Case("rollout to an unknown backend", ["plan"], "Rollout: unknown backend 'nope'",
             main=SINGLE + ROLLOUT.format(endpoint="'one'", new="'nope'", extra="")),
        Case("rollout of an unknown endpoint", ["plan"], "Rollout: unknown endpoint 'nope'",
             main=SINGLE + ROLLOUT.format(endpoint="'nope'", new="b", extra="")),
        Case("rollout steps not rising to 1", ["plan"], "steps: the last step must be 1.0",
             main=SINGLE + ROLLOUT.format(endpoint="'one'", new="b", extra="").replace("[0.1, 1.0]", "[0.1, 0.5]")),
        Case("rollout to the backend it has", ["plan"], "backend 'bad_a' already takes all of endpoint 'one'",
             main=SINGLE + ROLLOUT.format(endpoint="'one'", new="a", extra="")),
        Case("rollout gate out of range", ["plan"], "ErrorRate: max: Input should be less than or equal to 1",
             main=SINGLE + ROLLOUT.format(endpoint="'one'", new="b", extra=", analysis=[ErrorRate(max=5)]")),
        Case("rollout with both flags", ["rollout", "--resume", "--abort"], "give one of --resume, --abort and --retry",
             main=SINGLE + ROLLOUT.format(endpoint="'one'", new="b", extra="")),
        Case("rollout without a Rollout", ["rollout", "--auto-approve"], "the config declares no Rollout(...)"),
        # --- values that reach configuration files, command lines and scripts: whole-value rules -----------------
        # --- the app shapes of issue #17 -------------------------------------------------------------------------
        Case("a class neither callable nor an ASGI ingress", ["plan"],
             "class M (models.py:1) has no __call__(self, request) method and is not under @serve.ingress(app)",
             models="class M:\n    def handle(self, request):\n        return 'ok'\n"),
        Case("a request timeout of 0", ["plan"], "request_timeout_s: Input should be greater than 0",
             main=_swap('Backend("bad_b", "models:M",', 'Backend("bad_b", "models:M", request_timeout_s=0,')),
        Case("a health check timeout below 0", ["plan"], "health_check_timeout_s: Input should be greater than 0",
             main=_swap('Backend("bad_b", "models:M",', 'Backend("bad_b", "models:M", health_check_timeout_s=-1,')),
        Case("a queue limit of 10**12", ["plan"], "max_queued_requests: Input should be less than or equal to 1000000",
             main=_swap('Backend("bad_b", "models:M",', 'Backend("bad_b", "models:M", max_queued_requests=10**12,')),
        Case("a deregistration delay of 0", ["plan"], "deregistration_delay_s: Input should be greater than or equal to 1",
             main=_swap('traffic={a: 0.5, b: 0.5})', 'traffic={a: 0.5, b: 0.5}, deregistration_delay_s=0)')),
        Case("a deregistration delay of two hours", ["plan"],
             "deregistration_delay_s: Input should be less than or equal to 3600",
             main=_swap('traffic={a: 0.5, b: 0.5})', 'traffic={a: 0.5, b: 0.5}, deregistration_delay_s=7200)')),
        Case("a deregistration delay of nan", ["plan"], "deregistration_delay_s: Input should be a finite number",
             main=_swap('traffic={a: 0.5, b: 0.5})', 'traffic={a: 0.5, b: 0.5}, deregistration_delay_s=float("nan"))')),
        Case("max_models_per_replica without a serve.multiplexed loader", ["plan"],
             "max_models_per_replica=2 but class M (models.py:1) has no @serve.multiplexed loader method",
             main=_swap('Backend("bad_b", "models:M",', 'Backend("bad_b", "models:M", max_models_per_replica=2,')),
        Case("max_models_per_replica of 0", ["plan"], "max_models_per_replica: Input should be greater than or equal to 1",
             main=_swap('Backend("bad_b", "models:M",', 'Backend("bad_b", "models:M", max_models_per_replica=0,')),
        Case("models= naming a backend that loads no models", ["plan"],
             "endpoint 'bad' sends model 'm-1' to backend 'bad_b', which loads no models",
             main=_swap('traffic={a: 0.5, b: 0.5})', 'traffic={a: 0.5, b: 0.5}, models={"m-1": b})')),
        Case("models= on an endpoint without multiplexing", ["plan"],
             "endpoint 'bad' routes model ids, but its traffic goes to backend 'bad_a', which loads no models",
             main=_swap('traffic={a: 0.5, b: 0.5})', 'traffic={a: 0.5, b: 0.5}, models={"m-1": "bad_c"})')
             + 'Backend("bad_c", "models:Multi", max_models_per_replica=2, ray_actor_options={"num_cpus": 0.1})\n',
             models=MODELS + MULTIPLEXED),
        Case("a Rollout of a model id on backends that load no models", ["plan"],
             "Rollout: model 'm-1' of endpoint 'one' involves backend 'bad_a', which loads no models",
             main=SINGLE + ROLLOUT.format(endpoint="'one'", new="b", extra=", model='m-1'")),
        Case("a Rollout of a malformed model id", ["plan"], "Rollout: model id 'm\\n1' is invalid",
             main=SINGLE + ROLLOUT.format(endpoint="'one'", new="b", extra=", model='m\\n1'")),
        Case("a model id with a space (it reaches the proxy's configuration)", ["plan"], "model id 'm 1' is invalid",
             main=_swap('traffic={a: 0.5, b: 0.5})', 'traffic={a: 0.5, b: 0.5}, models={"m 1": b})')),
        Case("a model id's weights not summing to 1", ["plan"], "model 'm-1''s traffic weights sum to 0.5",
             main=_swap('traffic={a: 0.5, b: 0.5})', 'traffic={a: 0.5, b: 0.5}, models={"m-1": {b: 0.5}})')),
        Case("backend name ending in a newline", ["plan"], "backend name 'bad_b\\n' is invalid",
             main=_swap('Backend("bad_b", "models:M"', 'Backend("bad_b\\n", "models:M"')),
        Case("route ending in a newline", ["plan"], "route '/bad\\n' must be a path starting with '/'",
             main=_swap('route="/bad"', 'route="/bad\\n"')),
        Case("route under Serve's own", ["plan"], "not under /_servectl or /-/",
             main=_swap('route="/bad"', 'route="/-/healthz"')),
        Case("route under servectl's own", ["plan"], "not under /_servectl or /-/",
             main=_swap('route="/bad"', 'route="/_servectl/bad_a"')),
        Case("user_config with servectl's mark", ["plan"], "the key '__servectl_sealed__' is servectl's own",
             main=_swap('b = Backend("bad_b", "models:M", ',
                        'b = Backend("bad_b", "models:M", user_config={"__servectl_sealed__": "x"}, ')),
        Case("aws region with a command in it", ["plan"], "is not an AWS region like us-east-1",
             main=_aws_main("http://127.0.0.1:1").replace("region='us-east-1'", "region='us-east-1; curl x | sh'")),
        Case("aws resource name with a quote", ["plan"], "resource name \"x'y\"",
             main=_aws_main("http://127.0.0.1:1").replace("resources={'CPU': 2})]", "resources={'CPU': 2, \"x'y\": 1})]")),
        Case("aws code bucket that is the state bucket", ["plan"], "is also the S3State bucket",
             main=_aws_main("http://127.0.0.1:1").replace("dashboard_url=", "code_bucket='shared-b', dashboard_url=")
             + "from servectl import S3State\nS3State(bucket='shared-b', key='s.json', region='us-east-1')\n", fresh=True),
        Case("aws instance type with a space", ["plan"], "not an EC2 instance type like m6i.xlarge",
             main=_aws_main("http://127.0.0.1:1").replace("instance_type='m6i.large', resources={'CPU': 2})]",
                                                         "instance_type='m6i.large x', resources={'CPU': 2})]")),
        Case("backend code left out by the ignore file", ["plan"], "its code models.py is left out by .servectlignore",
             prepare=lambda d: (d / ".servectlignore").write_text("models.py\n")),
        Case("sensitive var of the wrong type", ["plan", "--var", "secret_n=CanaryNotNumber"],
             "--var secret_n=(sensitive): not a valid int", main=GOOD + 'var("secret_n", default=1, sensitive=True)\n'),
        Case("dict var given a list", ["plan", "--var", "shape=[1, 2]"], "--var shape='[1, 2]': not a valid JSON object",
             main=GOOD + 'var("shape", default={"a": 1})\n'),
        # --- numbers out of bounds: one line, never a plan that runs forever --------------------------------------
        Case("a trillion replicas", ["plan"], "num_replicas: Input should be less than or equal to 10000",
             main=_swap('b = Backend("bad_b", "models:M", ', 'b = Backend("bad_b", "models:M", num_replicas=10**12, ')),
        Case("infinite cpus", ["plan"], "num_cpus: Input should be a finite number",
             main=_swap('{"num_cpus": 0.1})\nEndpoint', '{"num_cpus": float("inf")})\nEndpoint')),
        Case("batch larger than the concurrency", ["plan"], "max_batch_size 64 is above max_concurrent_queries 8",
             main=_swap('b = Backend("bad_b", "models:M", ',
                        'b = Backend("bad_b", "models:M", max_batch_size=64, max_concurrent_queries=8, ')),
        Case("timeout of zero", ["apply", "--auto-approve", "--timeout", "0"], "--timeout 0 is out of range: give 1 to 86400",
             main=_swap("default=1", "default=2")),
        Case("status window of a year", ["status", "--window", "31536000"], "--window 3.1536e+07 is out of range"),
        # --- the command line -----------------------------------------------------------------------------------
        Case("var without value", ["plan", "--var", "replicas"], "--var 'replicas': expected NAME=VALUE"),
        Case("var of the wrong type", ["plan", "--var", "replicas=many"], "--var replicas='many': not a valid int"),
        Case("undeclared var", ["plan", "--var", "replica=2"], "--var replica: no variable 'replica' is declared"),
        Case("unknown target", ["plan", "--target", "backend.nope"], "--target backend.nope: no such resource in the config or the state"),
        Case("rollback to an unknown serial", ["rollback", "--to", "999", "--auto-approve"],
             "no applied version with serial 999 in the history"),
        Case("state show of an unknown address", ["state", "show", "backend.nope"], "no resource 'backend.nope' in the state"),
        Case("missing plan file", ["apply", "{dir}/missing.plan"], "missing.plan: no such plan file"),
        Case("var with a saved plan", ["apply", "{dir}/p.plan", "--var", "replicas=3"],
             "--var cannot be used with a saved plan", prepare=_saved_plan(lambda d: None)),
        Case("apply not approved", ["apply"], "apply cancelled: not approved",
             main=_swap("default=1", "default=2")),
        # --- state files ---------------------------------------------------------------------------------------
        Case("truncated state", ["plan"], "state file is corrupt", prepare=_truncate),
        Case("newer state format", ["apply", "--auto-approve"], "written by a newer servectl",
             prepare=_edit_state(lambda body: body.update(format_version=99))),
        Case("state open to others", ["plan"], "open to other users (mode 0644)", prepare=_open_to_others),
        Case("state lock held", ["apply", "--auto-approve"], "lock ID", prepare=_hold_lock,
             main=_swap("default=1", "default=2")),
        Case("destroy with a held lock", ["destroy", "--auto-approve"], "lock ID", prepare=_hold_lock),
        Case("a held lock outlasting --lock-timeout", ["apply", "--auto-approve", "--lock-timeout", "1s"],
             "; still held after --lock-timeout 1 s", prepare=_hold_lock, main=_swap("default=1", "default=2")),
        Case("a lock timeout that is no duration", ["apply", "--auto-approve", "--lock-timeout", "5x"],
             "--lock-timeout '5x': expected a duration such as 30s, 5m or 1h30m (units h, m, s, ms)", main=_swap("default=1", "default=2")),
        Case("a negative lock timeout", ["rollback", "--auto-approve", "--lock-timeout=-1s"],
             "--lock-timeout '-1s': expected a duration such as 30s, 5m or 1h30m (units h, m, s, ms)"),
        Case("a lock timeout of two days", ["destroy", "--auto-approve", "--lock-timeout", "48h"],
             "--lock-timeout 48h is out of range: give 0s to 24h"),
        # --- saved plans ---------------------------------------------------------------------------------------
        Case("stale plan", ["apply", "{dir}/p.plan"], "the state changed since this plan was made",
             prepare=_saved_plan(_bump_serial)),
        Case("plan from another state (lineage)", ["apply", "{dir}/p.plan"], "the state was replaced since this plan was made",
             prepare=_saved_plan(_new_lineage)),
        Case("tampered plan", ["apply", "{dir}/p.plan"], "modified after servectl wrote it", prepare=_saved_plan(_tamper)),
        Case("plan from another config", ["apply", "{dir}/p.plan"], "was planned for", prepare=_plan_elsewhere),
        Case("garbage plan file", ["apply", "{dir}/p.plan"], "not a servectl plan file",
             prepare=lambda d: (d / "p.plan").write_text("not a plan")),
        # --- live faults ---------------------------------------------------------------------------------------
        Case("cluster down", ["plan"], f"cannot reach the Ray cluster at 127.0.0.1:{closed_port}",
             main=GOOD.replace("LocalRay()", f'LocalRay(address="127.0.0.1:{closed_port}")'), fresh=True),
        Case("S3 unreachable", ["plan"], "cannot reach S3 to read the state",
             main=GOOD.replace("LocalRay()", "LocalRay()\nfrom servectl import S3State\n"
                               f"S3State(bucket='b-1', key='s.json', region='us-east-1', "
                               f"endpoint_url='http://127.0.0.1:{closed_port}')"), fresh=True),
        Case("dashboard answers 500", ["drift"], "answered 500", main=_aws_main(failing_dashboard), fresh=True,
             prepare=_aws_applied),
    ]


def _aws_main(dashboard: str) -> str:
    return (
        "from servectl import AwsRay, NodeType, LoadBalancer\nAwsRay(region='us-east-1', cluster_name='bad500', "
        "head=NodeType('head', instance_type='m6i.large', resources={'CPU': 2}), "
        "node_types=[NodeType('cpu', instance_type='m6i.large', resources={'CPU': 2})], "
        f"load_balancer=LoadBalancer(allowed_cidrs=['203.0.113.0/24']), dashboard_url='{dashboard}')\n"
    )


def _aws_applied(directory: Path) -> None:
    """An AWS cluster's resources applied (on moto; no backends yet, so no call to its dashboard)."""
    applied = run_cli(directory, "apply", "--auto-approve")
    assert applied.code == 0, applied.output


def _plan_elsewhere(directory: Path) -> None:
    """A plan saved in another config dir, brought here."""
    other = directory.parent / f"{directory.name}-other"
    shutil.copytree(directory, other, ignore=shutil.ignore_patterns("master.sock"))  # a socket: not a file
    (other / "main.py").write_text(_swap("default=1", "default=2"))
    saved = run_cli(other, "plan", "--out", str(directory / "p.plan"))
    assert saved.code == 0, saved.output


class _Failing(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self.send_response(500)
        self.end_headers()
        self.wfile.write(b"Internal Server Error: the dashboard is broken")

    do_PUT = do_GET

    def log_message(self, *args) -> None:
        pass


def _check(case: Case, base: Path, root: Path) -> tuple[str, Optional[str]]:
    """The case's error line, and what is wrong with how it failed (None: one clear line, nothing changed)."""
    directory = root / case.name.replace(" ", "-").replace("(", "").replace(")", "")
    if case.fresh:
        write_config(directory, case.main or GOOD, models=case.models or MODELS)
    else:
        shutil.copytree(base, directory, ignore=shutil.ignore_patterns("master.sock"))
        if case.main is not None:
            (directory / "main.py").write_text(case.main)
        if case.models is not None:
            (directory / "models.py").write_text(case.models)
    if case.prepare is not None:
        case.prepare(directory)
    before = file_digest(directory / STATE)
    result = run_cli(directory, *(arg.replace("{dir}", str(directory)) for arg in case.args), stdin="no\n")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    problems = []
    if result.code != 1:
        problems.append(f"exit {result.code}")
    if "Traceback" in result.output:
        problems.append("a traceback")
    if len(lines) != 1 or not lines[0].startswith("Error: "):
        problems.append(f"{len(lines)} stderr lines")
    elif case.expect not in lines[0]:
        problems.append(f"no {case.expect!r}")
    if file_digest(directory / STATE) != before:
        problems.append("the state changed")
    failure = f"{case.name}: {', '.join(problems)}: {result.stderr.strip()[:400]!r}" if problems else None
    return (lines[0] if lines else ""), failure


def test_every_bad_input_is_one_clear_line_and_changes_nothing(ray_cluster, moto_server, tmp_path, applied_dirs):
    base = write_config(tmp_path / "base", GOOD, models=MODELS)
    applied_dirs.append(base)
    first = run_cli(base, "apply", "--auto-approve")
    assert first.code == 0, first.output
    (closed_port,) = free_ports(1)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        table = cases(closed_port, f"http://127.0.0.1:{server.server_address[1]}")
        with ThreadPoolExecutor(max_workers=3) as pool:
            outcomes = list(pool.map(lambda c: _check(c, base, tmp_path / "cases"), table))
    finally:
        server.shutdown()
    for case, (line, _) in zip(table, outcomes):
        print(f"  {case.name:36} {line}")
    failures = [failure for _, failure in outcomes if failure]
    print(f"bad inputs: {len(table)} cases, {len(table) - len(failures)} one clear line with nothing changed")
    assert len(table) >= 40
    assert not failures, "\n".join(failures)
