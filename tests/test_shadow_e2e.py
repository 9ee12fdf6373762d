"""Shadow traffic: copies at the declared proportion, counted in metrics, never felt by the caller."""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest
import requests

from servectl.providers.embedded_cluster import RUNTIME_DIR
from servectl.providers.front_proxy import FrontProxy
from servectl.providers.shadow_copies import COPIES_PREFIX
from tests.conftest import copy_example, run_cli, scrape, write_config

pytestmark = pytest.mark.ray


def servectl_counts(cluster, endpoint: str) -> dict[tuple[str, str], float]:
    """{(backend, role): requests served} for one endpoint, from the Prometheus scrape."""
    counts: dict[tuple[str, str], float] = {}
    for key, value in scrape(cluster, "ray_servectl_requests").items():
        labels = dict(key[1:])
        if labels.get("endpoint") == endpoint:
            pair = (labels["backend"], labels["role"])
            counts[pair] = counts.get(pair, 0) + value
    return counts


def shadow_sent(cluster, endpoint: str) -> dict[str, float]:
    """{shadow backend: copies sent} for one endpoint (counted by the primaries), from the Prometheus scrape."""
    sent: dict[str, float] = {}
    for key, value in scrape(cluster, "ray_servectl_shadow_sent").items():
        labels = dict(key[1:])
        if labels.get("endpoint") == endpoint:
            sent[labels["backend"]] = sent.get(labels["backend"], 0) + value
    return sent


def copies_sent_by(proxy: FrontProxy) -> dict[str, int]:
    """{shadow backend: copies} the front proxy's current workers sent themselves (its copies' sections)."""
    sent: dict[str, int] = {}
    for (section, _server), count in proxy.served().items():
        if section.startswith(COPIES_PREFIX):
            sent[section[len(COPIES_PREFIX):]] = sent.get(section[len(COPIES_PREFIX):], 0) + count
    return sent


def wait_for_counts(cluster, endpoint: str, primary_backend: str, expected_primary: int, timeout: float = 120):
    """Wait until the primary count is complete and nothing changed for a whole metrics export cycle.

    Each Ray process exports its metrics on its own cycle (every second on the
    embedded cluster), so one unchanged pair of readings is not enough: a late
    process may still report.
    """
    deadline = time.time() + timeout
    last, stable_since = None, time.time()
    while time.time() < deadline:
        counts = servectl_counts(cluster, endpoint)
        if counts != last:
            last, stable_since = counts, time.time()
        elif counts.get((primary_backend, "primary"), 0) >= expected_primary and time.time() - stable_since >= 3:
            return counts
        time.sleep(0.5)
    raise AssertionError(f"metrics did not settle: {last}")


def test_shadow_proportions_are_copied_and_counted(ray_cluster, tmp_path, applied_dirs):
    config = copy_example("shadow", tmp_path)
    applied_dirs.append(config)
    assert run_cli(config, "apply", "--auto-approve").code == 0
    session = requests.Session()
    for _ in range(1000):
        response = session.get(ray_cluster.url("/shadow"), timeout=10)
        assert response.status_code == 200 and response.text == "served by existing_backend"
    counts = wait_for_counts(ray_cluster, "shadowed_endpoint", "existing_backend", 1000)
    print(f"1000 requests, shadow 0.5 / 0.1: {counts}")
    assert counts[("existing_backend", "primary")] == 1000
    assert abs(counts.get(("new_backend_1", "shadow"), 0) - 500) <= 80
    assert abs(counts.get(("new_backend_2", "shadow"), 0) - 100) <= 40
    assert ("new_backend_1", "primary") not in counts  # copies only, never answers
    # The front proxy sent every one of those copies itself (its copies' sections count them)...
    proxy = FrontProxy(str(Path(config) / RUNTIME_DIR))
    assert copies_sent_by(proxy) == {"new_backend_1": counts[("new_backend_1", "shadow")],
                                     "new_backend_2": counts[("new_backend_2", "shadow")]}
    # ...and what it does not hold whole — a method its HTTP client does not send, a body past its buffer — the
    # primary copies through Serve's handles: every copy still arrives, counted where it was sent.
    sent_before = shadow_sent(ray_cluster, "shadowed_endpoint")
    for _ in range(60):
        assert session.patch(ray_cluster.url("/shadow"), data=b"x", timeout=10).text == "served by existing_backend"
    for _ in range(20):
        assert session.post(ray_cluster.url("/shadow"), data=b"x" * 200_000, timeout=10).status_code == 200
    more = wait_for_counts(ray_cluster, "shadowed_endpoint", "existing_backend", 1080)
    assert copies_sent_by(proxy) == {"new_backend_1": counts[("new_backend_1", "shadow")],
                                     "new_backend_2": counts[("new_backend_2", "shadow")]}  # none of these
    sent = {name: value - sent_before.get(name, 0) for name, value in shadow_sent(ray_cluster, "shadowed_endpoint").items()}
    arrived = {name: more.get((name, "shadow"), 0) - counts.get((name, "shadow"), 0) for name in ("new_backend_1", "new_backend_2")}
    print(f"80 requests the primary copied: sent {sent}, arrived {arrived}")
    assert arrived["new_backend_1"] > 20 and sent == arrived
    counts = more

    # A proportion of 0 stops shadowing: in place, and no new copies arrive.
    planned = run_cli(config, "plan", "--var", "shadow_1=0", "--var", "shadow_2=0")
    assert "~ endpoint \"shadowed_endpoint\"" in planned.stdout and "0 to replace" in planned.stdout
    assert run_cli(config, "apply", "--var", "shadow_1=0", "--var", "shadow_2=0", "--auto-approve").code == 0
    # A connection kept alive across the reload gets one more answer from the previous worker, under the policy
    # it was accepted with (HAProxy's idle-close-on-response: no request is refused while a reload drains); new
    # connections get the new policy at once.
    session.close()
    session = requests.Session()
    for _ in range(200):
        assert session.get(ray_cluster.url("/shadow"), timeout=10).status_code == 200
    after = wait_for_counts(ray_cluster, "shadowed_endpoint", "existing_backend", 1280)
    assert after[("existing_backend", "primary")] == 1280
    for shadow in ("new_backend_1", "new_backend_2"):  # not one more copy after shadowing stopped
        assert after.get((shadow, "shadow"), 0) == counts.get((shadow, "shadow"), 0)


BAD_SHADOWS = """
from servectl import Backend, Endpoint, LocalRay, var
LocalRay()
on = var("shadow", default=0.0)
small = {"num_cpus": 0.25}
fast = Backend("fast", "models:Fast", ray_actor_options=small)
slow = Backend("slow", "models:Slow", ray_actor_options=small)
broken = Backend("broken", "models:Broken", ray_actor_options=small)
Endpoint("guarded", route="/guarded", backend=fast, shadow={slow: on, broken: on})
"""
BAD_MODELS = """
import asyncio

class Fast:
    async def __call__(self, request):
        return "fast"

class Slow:
    async def __call__(self, request):
        await asyncio.sleep(5)
        return "slow"

class Broken:
    def __call__(self, request):
        raise RuntimeError("shadow model is broken")
"""


def test_slow_or_failing_shadow_leaves_the_caller_alone(ray_cluster, tmp_path, applied_dirs):
    config = write_config(tmp_path / "badshadow", BAD_SHADOWS, models=BAD_MODELS)
    applied_dirs.append(config)
    assert run_cli(config, "apply", "--auto-approve").code == 0
    session = requests.Session()

    def latencies(count: int) -> list[float]:
        out = []
        for _ in range(count):
            start = time.perf_counter()
            response = session.get(ray_cluster.url("/guarded"), timeout=30)
            out.append(time.perf_counter() - start)
            assert response.status_code == 200 and response.text == "fast"
        return sorted(out)

    latencies(20)  # warm up
    without = latencies(150)
    assert run_cli(config, "apply", "--var", "shadow=1.0", "--auto-approve").code == 0
    latencies(20)
    with_shadow = latencies(150)
    p50_without, p50_with = statistics.median(without), statistics.median(with_shadow)
    p95_without, p95_with = without[int(0.95 * len(without))], with_shadow[int(0.95 * len(with_shadow))]
    print(f"caller latency p50 {p50_without * 1000:.1f} → {p50_with * 1000:.1f} ms, "
          f"p95 {p95_without * 1000:.1f} → {p95_with * 1000:.1f} ms, max {with_shadow[-1] * 1000:.0f} ms "
          "(every request shadowed to a 5 s backend and a raising one)")
    assert with_shadow[-1] < 1.0  # nobody waited for the 5 s shadow
    assert p50_with <= p50_without * 2 + 0.02

    counts = wait_for_counts(ray_cluster, "guarded", "fast", 340)
    assert counts.get(("slow", "shadow"), 0) > 0 and counts.get(("broken", "shadow"), 0) > 0
    sent = {dict(k[1:])["backend"]: v for k, v in scrape(ray_cluster, "ray_servectl_shadow_sent").items()
            if dict(k[1:]).get("endpoint") == "guarded"}
    errors = {(dict(k[1:])["backend"], dict(k[1:])["role"]): v for k, v in scrape(ray_cluster, "ray_servectl_errors").items()
              if dict(k[1:]).get("endpoint") == "guarded"}
    print(f"shadow copies sent: {sent}; errors: {errors}")
    assert sent.get("slow", 0) >= 150 and sent.get("broken", 0) >= 150  # every request was copied to both
    assert errors.get(("broken", "shadow"), 0) > 0 and ("fast", "primary") not in errors


RECORDED_MAIN = """
from servectl import Backend, Endpoint, LocalRay
LocalRay()
small = {{"num_cpus": 0.25}}
primary = Backend("rec_primary", "models:Recorder", {primary!r}, ray_actor_options=small)
shadow = Backend("rec_shadow", "models:Recorder", {shadow!r}, ray_actor_options=small)
Endpoint("recorded", route="/rec", backend=primary, shadow={{shadow: 1.0}})
"""
RECORDER = """
import json
import re

class Recorder:
    def __init__(self, log):
        self.log = log

    async def __call__(self, request):
        # What both kinds of request a backend gets have (an HTTP request; a handle's, for the copies a primary
        # sends): the path is the backend's internal route, so compared from under it.
        path = getattr(request, "path", None) or request.url.path
        seen = {"method": request.method, "path": re.sub("^/_servectl/[^/]+", "", path),
                "query": dict(request.query_params), "body": (await request.body()).decode(),
                "header": request.headers.get("x-test"), "type": request.headers.get("content-type")}
        with open(self.log, "a") as log:
            log.write(json.dumps(seen, sort_keys=True) + "\\n")
        return "recorded"
"""


def test_a_shadow_gets_the_same_request_as_its_primary_whoever_sends_the_copy(ray_cluster, tmp_path, applied_dirs):
    """What a shadow receives is what its primary received — method, path under the route, query, body, headers —
    for the copies the front proxy sends (a GET with a query, a small POST) and those the primary sends (a PATCH,
    a body past the proxy's buffer)."""
    primary_log, shadow_log = tmp_path / "primary.jsonl", tmp_path / "shadow.jsonl"
    config = write_config(tmp_path / "recorded", RECORDED_MAIN.format(primary=str(primary_log), shadow=str(shadow_log)),
                          models=RECORDER)
    applied_dirs.append(config)
    assert run_cli(config, "apply", "--auto-approve").code == 0
    headers = {"x-test": "one, two", "content-type": "text/plain; charset=utf-8"}
    with requests.Session() as session:
        for method, path, body in (("GET", "/rec/a/b?x=1&y=%20z", None), ("POST", "/rec/p", "hello"),
                                   ("PATCH", "/rec/q?k=v", "patched"), ("POST", "/rec/big", "b" * 100_000)):
            answer = session.request(method, ray_cluster.url(path), data=body, headers=headers, timeout=10)
            assert answer.status_code == 200 and answer.text == "recorded", (method, path, answer.text)
    deadline = time.time() + 30
    while time.time() < deadline and len(_lines(shadow_log)) < 4:
        time.sleep(0.2)
    primary, shadow = _lines(primary_log), _lines(shadow_log)
    assert len(primary) == 4 and sorted(shadow) == sorted(primary), (primary, shadow)
    assert [json.loads(line)["query"] for line in primary][0] == {"x": "1", "y": " z"}
    # The front proxy sent the GET's and the small POST's copies; the primary the PATCH's and the big body's.
    assert copies_sent_by(FrontProxy(str(Path(config) / RUNTIME_DIR))) == {"rec_shadow": 2}


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
