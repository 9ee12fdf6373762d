"""Load held through every kind of apply: no failed request, and shard keys stay put between weight changes.

A bounded loopback load generator (four clients, 20 % of requests carrying
one of 50 shard keys) runs against a traffic-split endpoint while the real
CLI applies, one after another, over 30 changes: weight steps, a backend
added with traffic and removed, scale up and down, user_config changes, a
batched backend's batch size, code replaced and put back, and rollbacks.
Every response must be a 200. A request counts for stickiness only when it
was sent and answered while no apply ran (the same quiet spell): within one
such spell every shard key must be served by one backend. A fifth client
alternates a FastAPI ingress endpoint's JSON route and a streamed answer
beside it (issue #17): every one a 200, every stream whole.
"""
from __future__ import annotations

import collections
import random
import threading
import time

import pytest
import requests

from servectl.runtime.headers import SHARD_KEY_HEADER
from tests.conftest import run_cli, write_config

pytestmark = pytest.mark.ray

MAIN = """
from servectl import Backend, Endpoint, LocalRay, var
LocalRay()
share = var("canary_share", default=0.0)
extra_share = var("extra_share", default=0.0)
stable = Backend("rel_stable", "models:Tagged", "stable", num_replicas=var("stable_replicas", default=1),
                 user_config={"tag": var("tag", default="t0")}, ray_actor_options={"num_cpus": 0.1})
canary = Backend("rel_canary", "canary:Batched", "canary", max_batch_size=var("batch", default=4),
                 ray_actor_options={"num_cpus": 0.1})
traffic = {stable: round(1 - share - extra_share, 6), canary: share}
if var("with_extra", default=False):
    traffic[Backend("rel_extra", "models:Tagged", "extra", ray_actor_options={"num_cpus": 0.1})] = extra_share
Endpoint("rel", route="/rel", traffic=traffic)
Endpoint("rel_api", route="/rel-api", backend=Backend("rel_api", "api:Api", ray_actor_options={"num_cpus": 0.1}))
"""
API = """
import asyncio

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from ray import serve

app = FastAPI()


@serve.ingress(app)
class Api:
    @app.get("/items/{item_id}")
    def item(self, item_id: int) -> dict:
        return {"item_id": item_id}

    @app.get("/stream")
    def stream(self) -> StreamingResponse:
        async def lines():
            for i in range(5):
                yield f"{i}\\n"
                await asyncio.sleep(0.01)
        return StreamingResponse(lines(), media_type="text/plain")
"""
MODELS = """
class Tagged:
    def __init__(self, name):
        self.name, self.tag = name, ""

    def reconfigure(self, config):
        self.tag = (config or {}).get("tag", "")

    def __call__(self, request):
        return f"{self.name} {self.tag}"
"""
CANARY = """
VERSION = "{version}"


class Batched:
    def __init__(self, name):
        self.name = name

    def __call__(self, requests):
        return [f"{{self.name}}{{VERSION}} batch" for _ in requests]
"""
KEYS = [f"user-{i}" for i in range(50)]
# Each client's pause between requests: ~50 requests/s in all on a quiet machine (unpaced, four clients took 150 and
# the CPU the suite's other workers need); a quiet spell of QUIET_S after each apply still sees ~25 keyed requests.
PACE_S = 0.05
QUIET_S = 0.5


def changes() -> list[tuple[str, dict[str, str], str]]:
    """(what, the variables after it, canary's code version): one apply each."""
    steps: list[tuple[str, dict[str, str], str]] = []
    variables: dict[str, str] = {}
    version = ""

    def step(what: str, code: str = "", **values: object) -> None:
        nonlocal version
        variables.update({k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in values.items()})
        version = code or version
        steps.append((what, dict(variables), version))

    for share in (0.05, 0.1, 0.2, 0.3, 0.5):
        step(f"weights canary {share}", canary_share=share)
    step("scale stable 1 → 2", stable_replicas=2)
    step("user_config t0 → t1", tag="t1")
    step("batch size 4 → 8", batch=8)
    step("add a backend with traffic", with_extra=True, extra_share=0.2)
    for share in (0.3, 0.4, 0.2):
        step(f"weights canary {share} beside extra", canary_share=share)
    step("extra 0.2 → 0.3", extra_share=0.3)
    step("remove a backend", with_extra=False, extra_share=0.0)
    step("scale stable 2 → 3", stable_replicas=3)
    step("replace canary's code", code=" v2")
    step("batch size 8 → 2", batch=2)
    step("user_config t1 → t2", tag="t2")
    for share in (0.6, 0.8, 1.0, 0.5, 0.25):
        step(f"weights canary {share}", canary_share=share)
    step("scale stable 3 → 1", stable_replicas=1)
    step("batch size 2 → 16", batch=16)
    step("canary's first code again", code=" v1")
    step("user_config t2 → t3", tag="t3")
    for share in (0.4, 0.1):
        step(f"weights canary {share}", canary_share=share)
    return steps


def test_thirty_applies_under_load_fail_no_request(ray_cluster, tmp_path, applied_dirs):
    config = write_config(tmp_path / "reliability", MAIN, models=MODELS, canary=CANARY.format(version=" v1"), api=API)
    applied_dirs.append(config)
    assert run_cli(config, "apply", "--auto-approve").code == 0

    quiet = {"spell": 0, "applying": False}  # the spell counts quiet periods between applies
    results: list[tuple[int, int, object, str, str]] = []  # spell sent, spell answered, status, key, body
    lock = threading.Lock()
    stop = threading.Event()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with requests.Session() as session:
            while not stop.is_set():
                key = rng.choice(KEYS) if rng.random() < 0.2 else ""
                sent = -1 if quiet["applying"] else quiet["spell"]
                try:
                    answer = session.get(ray_cluster.url("/rel"), headers={SHARD_KEY_HEADER: key} if key else None,
                                         timeout=30)
                    outcome: object = answer.status_code
                    body = answer.text
                except requests.RequestException as err:
                    outcome, body = type(err).__name__, ""
                answered = -1 if quiet["applying"] else quiet["spell"]
                with lock:
                    results.append((sent, answered, outcome, key, body))
                time.sleep(PACE_S)

    app_results: list[tuple[object, bool]] = []  # status, whole (the item's JSON, or all five streamed lines)

    def app_client() -> None:
        with requests.Session() as session:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    if n % 2:
                        answer = session.get(ray_cluster.url(f"/rel-api/items/{n}"), timeout=30)
                        whole = answer.status_code == 200 and answer.json() == {"item_id": n}
                    else:
                        answer = session.get(ray_cluster.url("/rel-api/stream"), timeout=30)
                        whole = answer.status_code == 200 and answer.content == b"0\n1\n2\n3\n4\n"
                    outcome: object = answer.status_code
                except (requests.RequestException, ValueError) as err:  # ValueError: not the JSON expected
                    outcome, whole = type(err).__name__, False
                with lock:
                    app_results.append((outcome, whole))
                time.sleep(0.1)  # a steady few per second is proof enough, and the two cores are shared

    steps = changes()
    clients = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
    clients.append(threading.Thread(target=app_client))
    started = time.monotonic()
    for thread in clients:
        thread.start()
    applies = 0
    try:
        time.sleep(2)
        for what, variables, version in steps:
            (config / "canary.py").write_text(CANARY.format(version=version))
            args = [item for name, value in variables.items() for item in ("--var", f"{name}={value}")]
            quiet["applying"] = True
            result = run_cli(config, "apply", *args, "--auto-approve")
            quiet["spell"] += 1
            quiet["applying"] = False
            assert result.code == 0, f"{what}: {result.output}"
            applies += 1
            time.sleep(QUIET_S)
        for what in ("rollback", "rollback"):  # back one version, then forward again to the last
            quiet["applying"] = True
            result = run_cli(config, "rollback", "--auto-approve")
            quiet["spell"] += 1
            quiet["applying"] = False
            assert result.code == 0, f"{what}: {result.output}"
            applies += 1
            time.sleep(QUIET_S)
    finally:
        stop.set()
        for thread in clients:
            thread.join()
    elapsed = time.monotonic() - started
    failed = [r for r in results if r[2] != 200]
    backends = collections.Counter(body.split()[0] for _, _, status, _, body in results if status == 200)
    sticky: dict[tuple[int, str], set[str]] = collections.defaultdict(set)
    for sent, answered, status, key, body in results:
        if key and status == 200 and sent == answered >= 0:
            sticky[(sent, key)].add(body.split()[0])
    moved = {spell_key: names for spell_key, names in sticky.items() if len(names) > 1}
    keyed = sum(1 for r in results if r[3])
    print(f"requests={len(results)} failed={len(failed)} applies={applies} "
          f"({len(results) / elapsed:.0f} req/s over {elapsed:.0f}s; {keyed} with shard keys, "
          f"{len(sticky)} key×spell groups checked; served by {dict(backends)}); "
          f"fastapi+streaming={len(app_results)} broken={sum(1 for _, whole in app_results if not whole)}")
    assert applies >= 30
    assert not failed, collections.Counter(str(r[2]) for r in failed)
    assert len(results) / elapsed >= 20  # a real load throughout (paced; see PACE_S)
    assert not moved, dict(list(moved.items())[:5])
    assert {"stable", "canary", "extra"} <= set(backends)
    assert len(app_results) >= 100 and all(whole for _, whole in app_results), \
        collections.Counter(str(outcome) for outcome, whole in app_results if not whole)
