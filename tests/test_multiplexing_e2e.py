"""Model multiplexing (issue #17, item 4): many models behind one endpoint, a replica's model limit set by the
backend, requests for one model id sticking to the replica that holds it, and one model id moved to another
backend — over HTTP through the front proxy and over handles — while every other id stays where it was."""
from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import requests

import servectl
from tests.conftest import copy_example, run_cli, wait_for_http

pytestmark = pytest.mark.ray

MODEL = "serve_multiplexed_model_id"


def _ask(url: str, model: str, shard_key: str = "") -> dict:
    headers = {MODEL: model, **({"x-serve-shard-key": shard_key} if shard_key else {})}
    answer = requests.get(url, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_model_ids_load_where_they_are_asked_for_and_one_moves_alone(ray_cluster, tmp_path, applied_dirs):
    config = copy_example("multiplexing", tmp_path)
    applied_dirs.append(config)
    applied = run_cli(config, "apply", "--auto-approve")
    assert applied.code == 0, applied.output
    url = ray_cluster.url("/llm")
    wait_for_http(url)

    # Over HTTP: the header picks the model; adapter-7 is routed to `tuned`, every other id follows traffic.
    for model in ("adapter-1", "adapter-2", "adapter-7"):
        answer = _ask(url, model)
        assert answer["model"] == model and answer["backend"] == ("tuned" if model == "adapter-7" else "base"), answer
    # Once a replica holds a model, Serve sends that id's requests to it (after its model list reaches the router).
    time.sleep(1.5)
    holders = {model: {_ask(url, model)["replica"] for _ in range(8)} for model in ("adapter-1", "adapter-2")}
    assert all(len(pids) == 1 for pids in holders.values()), holders

    # The backend's max_models_per_replica (2), not the decorator's 8, bounds a replica's cache: a third model
    # unloads the least recently used, which loads again when asked for.
    from ray import serve

    servectl.connect(str(config))
    tuned = serve.get_deployment_handle("tuned", app_name="tuned")

    def loads(model: str) -> int:
        return tuned.options(multiplexed_model_id=model).remote(None).result(timeout_s=30)["loads"]

    first = loads("m-a")
    assert [loads(m) - first for m in ("m-b", "m-c", "m-a")] == [1, 2, 3]  # m-a was unloaded for m-c

    # The limit moves in place: the plan says reconfigure, the replica stays, and now holds three.
    planned = run_cli(config, "plan", "--var", "tuned_models=3")
    assert "max_models_per_replica changed (reconfigure() runs on every replica)" in planned.output, planned.output
    pid = tuned.options(multiplexed_model_id="m-a").remote(None).result(timeout_s=30)["replica"]
    assert run_cli(config, "apply", "--auto-approve", "--var", "tuned_models=3").code == 0
    before = loads("m-a")
    assert [loads(m) - before for m in ("m-c", "m-b", "m-a", "m-c")] == [0, 1, 1, 1]  # m-a, m-c kept; m-b added
    assert tuned.options(multiplexed_model_id="m-a").remote(None).result(timeout_s=30)["replica"] == pid

    # Handles follow the same per-model routing.
    handle = servectl.get_handle("llm")
    assert handle.options(multiplexed_model_id="adapter-7").remote(None).result(timeout_s=30)["backend"] == "tuned"
    assert handle.options(multiplexed_model_id="adapter-1").remote(None).result(timeout_s=30)["backend"] == "base"

    # One model id moves step by step: the plan names it, and no other id moves.
    moving = ["--var", "tuned_models=3", "--var", "adapter7_tuned=0.5"]
    planned = run_cli(config, "plan", *moving)
    assert "model adapter-7: tuned 1 → base 0.5, tuned 0.5" in planned.output, planned.output
    assert "traffic:" not in planned.output.split("Plan:")[0].split("endpoint.llm")[-1]
    assert run_cli(config, "apply", "--auto-approve", *moving).code == 0
    time.sleep(1.2)  # handles re-read the policy at most every second
    seen = Counter(_ask(url, "adapter-7")["backend"] for _ in range(60))
    assert set(seen) == {"base", "tuned"} and min(seen.values()) >= 10, seen
    assert {_ask(url, "adapter-1")["backend"] for _ in range(20)} == {"base"}
    keyed = {_ask(url, "adapter-7", shard_key="user-42")["backend"] for _ in range(10)}
    assert len(keyed) == 1  # a shard key still pins its backend within a model id's split
    by_handle = Counter(
        handle.options(multiplexed_model_id="adapter-7").remote(None).result(timeout_s=30)["backend"] for _ in range(40)
    )
    assert set(by_handle) == {"base", "tuned"}, by_handle

    # A Rollout of one model id: adapter-9 moves base → tuned in two steps, gated by the error rate, while a client
    # asks for it; every other id stays where it was.
    stop = threading.Event()
    statuses: Counter = Counter()

    def ask_for_adapter_9() -> None:
        while not stop.is_set():
            statuses[requests.get(url, headers={MODEL: "adapter-9"}, timeout=30).status_code] += 1
            time.sleep(0.05)

    client = threading.Thread(target=ask_for_adapter_9)
    client.start()
    try:
        rolled = run_cli(config, "rollout", "--auto-approve", *moving, "--var", "roll_out=adapter-9", "--var", "pause_s=2",
                         timeout=300)
    finally:
        stop.set()
        client.join()
    assert rolled.code == 0 and "Rollout complete!" in rolled.output, rolled.output
    assert set(statuses) == {200}, statuses
    assert {_ask(url, "adapter-9")["backend"] for _ in range(10)} == {"tuned"}
    assert {_ask(url, "adapter-1")["backend"] for _ in range(10)} == {"base"}
