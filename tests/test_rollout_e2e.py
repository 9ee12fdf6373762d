"""`servectl rollout` on real Ray under real load: a good candidate reaches 100 %, a failing one and a slow one are
rolled back by their gates at the first step, a killed rollout resumes, and a paused one resumes or aborts.

A loopback load generator (four clients, ~60 requests/s, 20 % with shard
keys) runs through each rollout. Every response is recorded with when it
was answered and which backend answered, so the tests can say exactly which
failures clients saw and when.
"""
from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
import pytest
import requests

from servectl.runtime.headers import SHARD_KEY_HEADER
from servectl.state.document import StateDocument
from servectl.state.local import LocalStateStore
from tests.conftest import SERVECTL, CliResult, copy_example, run_cli

pytestmark = pytest.mark.ray

KEYS = [f"user-{i}" for i in range(40)]
# The comparison with the stable backend's p99 is left wide here: two test workers share two cores, and a few
# requests delayed by the other workers move a 100-request p99 by hundreds of ms (a good candidate's reached 369 ms
# once). The absolute limit, raised to 1 s here, still judges every step (a 1.5 s candidate fails it below), and
# tests/test_analysis.py holds the comparison itself.
LIMITS = ("--var", "p99_vs_stable=20", "--var", "p99_max_ms=1000")
FAST = ("--var", "pause_s=4", "--var", "min_requests=10", *LIMITS)


def cli_env() -> dict[str, str]:
    """Read when a command starts: the session cluster's fixture sets the environment that points at it."""
    return {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}


@dataclass
class Load:
    """Clients sending GET /api until stopped: (answered at, status, shard key, body) per request."""

    url: str
    results: list[tuple[float, object, str, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> "Load":
        lock = threading.Lock()

        def client(seed: int) -> None:
            rng = random.Random(seed)
            with requests.Session() as session:
                while not self.stop.is_set():
                    key = rng.choice(KEYS) if rng.random() < 0.2 else ""
                    outcome: object
                    try:
                        answer = session.get(self.url, headers={SHARD_KEY_HEADER: key} if key else None, timeout=30)
                        outcome, body = answer.status_code, answer.text
                    except requests.RequestException as err:
                        outcome, body = type(err).__name__, ""
                    with lock:
                        self.results.append((time.monotonic(), outcome, key, body.strip('"')))
                    time.sleep(0.05)

        self.threads = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def between(self, start: float, end: float = float("inf")) -> list[tuple[float, object, str, str]]:
        return [r for r in self.results if start <= r[0] < end]


def state_of(config) -> StateDocument:
    return LocalStateStore.in_dir(str(config)).read()


def rollout_of(config) -> dict:
    return state_of(config).resources["endpoint.api"].attributes["rollout"]


def history_operations(config) -> list[str]:
    return [entry.operation for entry in LocalStateStore.in_dir(str(config)).history()]


def keys_never_go_back(results: list[tuple[float, object, str, str]], stable: str, new: str) -> list[str]:
    """Shard keys answered by ``new`` and later by ``stable``: a key moves only toward the growing backend."""
    seen_new: set[str] = set()
    back = []
    for _, status, key, body in sorted(results):
        if not key or status != 200:
            continue
        if body == new:
            seen_new.add(key)
        elif body == stable and key in seen_new:
            back.append(key)
    return back


def test_good_candidate_reaches_everyone_and_bad_ones_are_rolled_back_by_their_gates(ray_cluster, tmp_path, applied_dirs):
    config = copy_example("progressive_rollout", tmp_path)
    applied_dirs.append(config)
    plan = run_cli(config, "plan", *FAST, "--detailed-exitcode")
    assert plan.code == 2, plan.output
    assert "Rollout endpoint api: model_v1 → model_v2 in steps 10% → 50% → 100%, 4s each (pending)" in plan.output

    # 1. A good candidate: created with no traffic, then 10 % → 50 % → 100 %, each step a state serial.
    applying = subprocess.Popen([SERVECTL, "-C", str(config), "apply", "--auto-approve", *FAST], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=cli_env())
    serving(ray_cluster.url("/api"), applying)  # the load starts once the endpoint is served
    with Load(ray_cluster.url("/api")) as load:
        started = time.monotonic()
        output, _ = applying.communicate(timeout=300)
        good = CliResult(applying.returncode, output, "")
        assert good.code == 0, good.output
        assert "Rollout complete! rollout api (model_v1 → model_v2)" in good.output
        assert [line for line in good.output.splitlines() if "step" in line and "→ pass" in line], good.output
        assert rollout_of(config)["status"] == "completed"
        shown = run_cli(config, "status", "--window", "0")
        assert "rollout api: model_v1 → model_v2 completed at 100.0%" in shown.output, shown.output
        assert state_of(config).resources["endpoint.api"].attributes["traffic"] == {"model_v1": 0.0, "model_v2": 1.0}
        operations = history_operations(config)
        assert operations[-3:] == [
            "rollout api: model_v2 at 10.0% (step 1 of 3)", "rollout api: model_v2 at 50.0% (step 2 of 3)",
            "rollout api: model_v2 at 100% (completed)",
        ], operations
        time.sleep(1)
        good_results = load.between(started)
        assert all(status == 200 for _, status, _, _ in good_results), collections.Counter(r[1] for r in good_results)
        assert {body for _, _, _, body in load.between(time.monotonic() - 0.8)} == {"v2"}
        assert not keys_never_go_back(good_results, "v1", "v2")
        assert run_cli(config, "plan", *FAST, "--detailed-exitcode").code == 0  # done: nothing left to do
        # Every step is a version: rollback returns to step 2 (50 %), and the plan says the rollout is unfinished.
        back = run_cli(config, "rollback", "--auto-approve")
        assert back.code == 0, back.output
        assert state_of(config).resources["endpoint.api"].attributes["traffic"] == {"model_v1": 0.5, "model_v2": 0.5}
        assert (rollout_of(config)["status"], rollout_of(config)["weight"]) == ("progressing", 0.5)
        assert run_cli(config, "plan", *FAST, "--detailed-exitcode").code == 2

        # 2. A candidate failing half its requests: the rollout starts over from model_v1 and is aborted at step 1.
        # (At 20 % a 10-request window of a loaded box saw no error one time in ten: 0.8**10; at 50 %, 0.1 %.)
        started = time.monotonic()
        bad = run_cli(config, "rollout", "--auto-approve", *FAST, "--var", "candidate=v3", "--var", "fail_ratio=0.5")
        aborted_at = time.monotonic()
        assert bad.code == 1, bad.output
        assert "Error: rollout of model_v2 on endpoint api aborted at step 1 (10.0%): error rate" in bad.output
        assert "all traffic is back on model_v1" in bad.output
        record = rollout_of(config)
        assert (record["status"], record["weight"]) == ("aborted", 0.0)
        assert state_of(config).resources["endpoint.api"].attributes["traffic"] == {"model_v1": 1.0, "model_v2": 0.0}
        time.sleep(2)
        failed = [r for r in load.between(started) if r[1] != 200]
        step_one = [r for r in load.between(started, aborted_at)]
        assert failed, "the gate saw errors, so clients did too"
        assert all(at < aborted_at for at, _, _, _ in failed)  # none once traffic was back
        # Only the new backend's 10 % share could fail: about 50 % × 10 % of the step's requests.
        assert len(failed) <= max(6, 0.5 * 0.1 * len(step_one) * 3), (len(failed), len(step_one))
        assert all(body == "v1" for _, _, _, body in load.between(aborted_at + 0.5))
        assert run_cli(config, "plan", *FAST, "--var", "candidate=v3", "--var", "fail_ratio=0.5",
                       "--detailed-exitcode").code == 0  # aborted: nothing to do until the candidate changes

        # 3. A slow candidate fails the latency gate.
        slow = run_cli(config, "rollout", "--auto-approve", *FAST, "--var", "candidate=v4", "--var", "delay_ms=1500")
        assert slow.code == 1, slow.output
        assert "aborted at step 1 (10.0%): p99" in slow.output and "(limit 1000 ms)" in slow.output
        assert rollout_of(config)["status"] == "aborted"
    print(f"requests={len(load.results)} during the three rollouts; failed (all at the failing candidate's 10% "
          f"step)={len(failed)} of {len(step_one)}")


def serving(url: str, process: subprocess.Popen) -> None:
    """Wait until ``url`` answers 200 while ``process`` (an apply) runs; its output if it ends first."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the apply ended (exit {process.returncode}) before {url} answered:\n"
                                 f"{process.stdout.read() if process.stdout else ''}")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer 200 within 180s")


def read_until(process: subprocess.Popen, marker: str) -> list[str]:
    """The lines ``process`` prints, up to the first holding ``marker``."""
    lines: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if marker in line:
            break
    return lines


def test_a_killed_rollout_resumes_and_a_paused_one_resumes_or_aborts(ray_cluster, tmp_path, applied_dirs):
    config = copy_example("progressive_rollout", tmp_path)
    applied_dirs.append(config)
    slow_steps = ("--var", "pause_s=8", "--var", "min_requests=10", *LIMITS)
    process = subprocess.Popen([SERVECTL, "-C", str(config), "rollout", "--auto-approve", *slow_steps], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=cli_env())
    serving(ray_cluster.url("/api"), process)
    with Load(ray_cluster.url("/api")) as load:
        # SIGKILL in the middle of step 2's window: the state says 50 %, the lock is left behind.
        lines = read_until(process, "step 2/3")
        time.sleep(2)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert any("step 2/3, new backend at 50.0%" in line for line in lines), lines
        record = rollout_of(config)
        assert (record["status"], record["weight"]) == ("progressing", 0.5)
        blocked = run_cli(config, "rollout", "--auto-approve", *slow_steps)
        assert blocked.code == 1 and "force-unlock" in blocked.output, blocked.output
        holder = LocalStateStore.in_dir(str(config))._read_lock_info()
        assert run_cli(config, "force-unlock", holder.id).code == 0

        # The next command watches step 2 again, then completes; --json for CI.
        resumed = run_cli(config, "rollout", "--auto-approve", "--json", *slow_steps)
        assert resumed.code == 0, resumed.output
        report = json.loads(resumed.stdout)["rollouts"][0]
        assert (report["outcome"], report["weight"]) == ("completed", 1.0)
        assert [step["step"] for step in report["steps"]] == [2]  # watched again after the kill
        assert report["steps"][0]["verdict"] == "pass" and report["steps"][0]["new"]["requests"] >= 10
        assert "rollout api: step 3/3" in resumed.stderr
        failures = [r for r in load.results if r[1] != 200]
        assert not failures, collections.Counter(r[1] for r in failures)

    # Without load nothing can be judged: the rollout pauses at its first step (exit 1 with the reason).
    idle = ("--var", "pause_s=2", "--var", "candidate=v5", "--var", "min_requests=10", *LIMITS)
    paused = run_cli(config, "rollout", "--auto-approve", *idle)
    assert paused.code == 1, paused.output
    assert "paused: step 1 (10.0%) could not be judged: 0 of 10 requests needed to judge" in paused.output.replace("\n", " ")
    assert (rollout_of(config)["status"], rollout_of(config)["weight"]) == ("paused", 0.1)
    assert run_cli(config, "plan", *idle, "--detailed-exitcode").code == 2  # paused: work left
    again = run_cli(config, "apply", "--auto-approve", *idle)  # apply does not resume a paused rollout
    assert again.code == 0 and "Rollout paused" in again.output, again.output
    assert rollout_of(config)["status"] == "paused"
    resumed = run_cli(config, "rollout", "--resume", *idle)  # a person judged step 1: step 2, which pauses again
    assert resumed.code == 1 and "step 2 (50.0%) could not be judged" in resumed.output, resumed.output
    abort = run_cli(config, "rollout", "--abort", *idle)
    assert abort.code == 0, abort.output
    assert "Rollout aborted" in abort.output and "aborted by hand" in abort.output
    assert state_of(config).resources["endpoint.api"].attributes["traffic"] == {"model_v1": 1.0, "model_v2": 0.0}
    history = run_cli(config, "state", "history")
    assert "rollout api: aborted, all traffic back on model_v1" in history.output
