"""The fast path of issue #18 on the local provider: ``LocalRay(ingress="direct")`` starts the embedded head with
Serve's direct ingress, and the front proxy sends each request straight to a replica of the backend the endpoint's
policy picked — never through Serve's Python proxy while the replicas are known — keeping the policy, a model id's
replica, and every request through weight changes, a rolling restart and a scale-down."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from servectl.providers.embedded_cluster import RUNTIME_DIR, free_ports
from servectl.providers.front_proxy import FrontProxy
from servectl.providers.processes import ProcessIdentity, session_members, signal_verified
from tests.conftest import SERVECTL, wait_for_http, write_config

pytestmark = pytest.mark.ray

CONFIG = '''
from servectl import Backend, Endpoint, LocalRay, var
LocalRay(ingress="direct", num_cpus=2)
small = {"num_cpus": 0.1}
v1 = Backend("fast_v1", "models:Version", "v1", num_replicas=var("v1_replicas", default=2), ray_actor_options=small,
             request_timeout_s=2)
v2 = Backend("fast_v2", "models:Version", var("v2_name", default="v2"), ray_actor_options=small)
share = var("v2_share", default=0.5)
Endpoint("fast", route="/fast", traffic={v1: 1.0 - share, v2: share})
many = Backend("fast_models", "models:Adapters", num_replicas=2, max_models_per_replica=4, ray_actor_options=small)
Endpoint("llm", route="/llm", backend=many)
'''
MODELS = '''
import asyncio
import os
from ray import serve


class Version:
    def __init__(self, name):
        self.name = name

    async def __call__(self, request):
        await asyncio.sleep(float(request.query_params.get("delay", 0)))
        return f"{self.name}:{os.getpid()}"


class Adapters:
    @serve.multiplexed(max_num_models_per_replica=4)
    async def load(self, model_id):
        return model_id

    async def __call__(self, request):
        return f"{await self.load(serve.get_multiplexed_model_id())}:{os.getpid()}"
'''


def replica_section(config: Path, name: str) -> str:
    """The lines of one backend section of the front proxy's configuration ("" while it has none: a backend with
    no running replica goes through Serve's proxy)."""
    text = (Path(config) / RUNTIME_DIR / "haproxy.cfg").read_text()
    start = text.find(f"\nbackend {name}\n")
    return text[start:].split("\nbackend ")[1] if start >= 0 else ""


def test_requests_go_straight_to_replicas_by_the_policy_and_none_fails_while_replicas_change(tmp_path):
    config = write_config(tmp_path / "fast", CONFIG, models=MODELS)
    (port,) = free_ports(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVECTL_RAY", "RAY_AUTH"))}
    env.update(SERVECTL_HTTP_PORT=str(port), NO_COLOR="1", COLUMNS="200")
    url = f"http://127.0.0.1:{port}"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([SERVECTL, "-C", str(config), *args], capture_output=True, text=True, env=env, timeout=300)

    applied = cli("apply", "--auto-approve")
    try:
        assert applied.returncode == 0, applied.stdout + applied.stderr
        wait_for_http(f"{url}/fast")
        proxy = FrontProxy(str(Path(config) / RUNTIME_DIR))
        section = replica_section(config, "be_fast_v1")
        assert section.count(" check") == 2, section  # both replicas of v1, each on its own port

        # The policy holds on the fast path: both backends answer, and only their replicas do (not Serve's proxy).
        answers = Counter(requests.get(f"{url}/fast", timeout=30).text.split(":")[0] for _ in range(40))
        assert set(answers) == {"v1", "v2"} and all(count >= 5 for count in answers.values()), answers
        served = proxy.served()
        direct = sum(count for (section, server), count in served.items() if section in ("be_fast_v1", "be_fast_v2")
                     and server != "serve")
        assert direct >= 40 and served.get(("be_fast_v1", "serve"), 0) == 0, served

        # A backend's request_timeout_s holds on its replica sections too: 504 at the bound, not the request's end.
        v1_key = next(f"t{n}" for n in range(100)
                      if requests.get(f"{url}/fast", headers={"x-serve-shard-key": f"t{n}"}, timeout=30).text.startswith("v1:"))
        started = time.monotonic()
        slow = requests.get(f"{url}/fast?delay=6", headers={"x-serve-shard-key": v1_key}, timeout=30)
        assert slow.status_code == 504 and 1.5 < time.monotonic() - started < 5, (slow.status_code, slow.text[:200])

        # A model id sticks to one replica of its backend (Serve's HAProxy mode loses this).
        for model in ("adapter-1", "adapter-2", "adapter-3"):
            pids = {requests.get(f"{url}/llm", headers={"serve_multiplexed_model_id": model}, timeout=30).text
                    for _ in range(8)}
            assert len(pids) == 1 and pids.pop().startswith(f"{model}:"), (model, pids)

        # Under load: a weight change, then at once a rolling restart of v2 (new init argument) and v1 from 2
        # replicas to 1.
        failures: list[str] = []
        seen: Counter = Counter()
        stop = threading.Event()

        def client() -> None:
            with requests.Session() as session:
                while not stop.is_set():
                    try:
                        answer = session.get(f"{url}/fast", timeout=30)
                        if answer.status_code != 200:
                            failures.append(f"{answer.status_code} {answer.text[:200]}")
                        else:
                            seen[answer.text.split(":")[0]] += 1
                    except requests.RequestException as err:
                        failures.append(repr(err))
                    time.sleep(0.02)

        threads = [threading.Thread(target=client) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            for args in (["--var", "v2_share=0.8"],
                         ["--var", "v2_share=0.8", "--var", "v2_name=v2b", "--var", "v1_replicas=1"]):
                step = cli("apply", "--auto-approve", *args)
                assert step.returncode == 0, step.stdout + step.stderr
            time.sleep(2)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        assert sum(seen.values()) >= 200, seen  # the load ran through both applies
        assert failures == [], failures[:5]
        assert seen["v2b"] > 0 and seen["v1"] > 0, seen
        assert replica_section(config, "be_fast_v1").count(" check") == 1

        # Between applies Serve replaces a replica that died: the watcher HAProxy's master runs (a program in its
        # configuration) puts the new one in the front proxy within seconds, with no apply.
        assert "program replica-watch" in (Path(config) / RUNTIME_DIR / "haproxy.cfg").read_text()
        before = replica_section(config, "be_fast_v2")
        key = next(f"k{n}" for n in range(100)
                   if requests.get(f"{url}/fast", headers={"x-serve-shard-key": f"k{n}"}, timeout=30).text.startswith("v2b:"))
        victim = int(requests.get(f"{url}/fast", headers={"x-serve-shard-key": key}, timeout=30).text.split(":")[1])
        record = json.loads((Path(config) / RUNTIME_DIR / "cluster.json").read_text())
        ours = session_members(ProcessIdentity.from_dict(record["identity"]))
        assert victim in ours  # a replica of this test's own cluster, nobody else's
        signal_verified(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while replica_section(config, "be_fast_v2") in (before, ""):
            assert time.monotonic() < deadline, f"the front proxy still holds {before}"
            time.sleep(0.5)
        after = replica_section(config, "be_fast_v2")
        assert after.count(" check") == 1 and after != before, after
        for _ in range(20):  # the new replica, straight
            answer = requests.get(f"{url}/fast", headers={"x-serve-shard-key": key}, timeout=30)
            assert answer.status_code == 200 and answer.text.split(":")[1] != str(victim), answer.text
    finally:
        destroyed = cli("destroy", "--auto-approve")
    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
