"""Crash safety: `servectl apply` SIGKILLed at 20 points, and every time the state stays true and apply converges.

The points are killed in three tests (``test_crash_safety.py``: after each
change; ``test_crash_safety_waits.py``: inside each health wait;
``test_crash_safety_writes.py``: inside state writes), so the suite's workers
run them side by side; each starts from its own applied config. This module
holds what they run.

The points: after each of its changes, while it waits for a change to be
healthy, and halfway through a state write (fault injection: the store
SIGKILLs its own process with half the temp file written). Each round
applies the other of two configs that differ in every way a change can
(create, in-place update, replace, delete, endpoint weights and target), so
a round has six changes to be killed in; the state-write points use six
in-place changes (``WRITES_MAIN``), which write the state as often for less.
After each kill:

- the state file parses (or is as it was, when the kill came before the
  first write of the round): ``corrupt_states`` counts those that do not;
- the next plan lists exactly the changes the killed apply had not reported
  done (its own progress lines, read after its death);
- `force-unlock` with the dead holder's lock ID, then `apply`, converge:
  exit 0, and a plan after it is empty;
- the history ends with an entry for the state's version, one per round
  (an apply killed after its changes but before its entry gets it recorded
  by the next apply, which has nothing else to do).

The crash tests run on the fallback data path (``SERVECTL_INGRESS=python``: through Serve's proxy): what they
check is the state and the plan, the same on both paths, so the fallback gets reliability tests of its own
while the apply-under-load test runs on the default path (and the multi-node node-kill test on EveryNode's,
which is the fallback).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from servectl.state.document import StateDocument
from servectl.state.local import LocalStateStore
from servectl.engine.workspace import Workspace
from tests.conftest import SERVECTL, run_cli, write_config

MAIN = """
from servectl import Backend, Endpoint, LocalRay, var
LocalRay()
phase = var("phase", default=0)
small = {"num_cpus": 0.1}
x = Backend("cs_x", "models:Slow", "x", user_config={"phase": phase}, ray_actor_options=small)
y = Backend("cs_y", "models:Slow", f"y{phase}", ray_actor_options=small)
other = Backend("cs_z" if phase == 0 else "cs_w", "models:Slow", "zw", ray_actor_options=small)
Endpoint("cs", route="/cs", traffic={x: 0.3 + 0.4 * phase, y: 0.7 - 0.4 * phase})
Endpoint("cs_other", route="/cs-other", backend=other)
"""
MODELS = """
import time
from pathlib import Path


class Slow:
    def __init__(self, name):
        time.sleep(0.3)  # with the worker's start, a health wait long enough to be killed in
        self.name = name

    def reconfigure(self, config):
        time.sleep(0.5)  # an in-place change with a health wait to be killed in

    def __call__(self, request):
        return self.name
"""
# The state-write points need writes, not slow changes: six in-place changes (three reconfigures, three weight
# moves) give a round the same 14 writes at a fraction of the cost of starting and stopping replicas.
WRITES_MAIN = """
from servectl import Backend, Endpoint, LocalRay, var
LocalRay()
phase = var("phase", default=0)
small = {"num_cpus": 0.1}
a, b, c = (Backend(f"cw_{n}", "models:Quick", n, user_config={"phase": phase}, ray_actor_options=small) for n in "abc")
for name, (one, two) in {"cw1": (a, b), "cw2": (b, c), "cw3": (c, a)}.items():
    Endpoint(name, route=f"/{name}", traffic={one: 0.3 + 0.4 * phase, two: 0.7 - 0.4 * phase})
"""
WRITES_MODELS = """
class Quick:
    def __init__(self, name):
        self.name = name

    def reconfigure(self, config):
        self.phase = config["phase"]

    def __call__(self, request):
        return self.name
"""
DONE = re.compile(r"› (\S+): (created|updated|replaced|destroyed) in ")
STARTED = re.compile(r"› (\S+): [\w ]+ … \((\d+)/(\d+)\)")
# A round's apply writes the state 13 times (each change: "applying", then done; then the final write),
# then its history entry (write 14). After its last change only writes are left: those are the write points.
AFTER_CHANGE_POINTS = [("after change", k) for k in range(1, 6)]
HEALTH_WAIT_POINTS = [("waiting for health", k) for k in range(1, 7)]
WRITE_POINTS = [("state write", n) for n in (1, 2, 4, 6, 9, 11, 12, 13, 14)]
POINTS = AFTER_CHANGE_POINTS + HEALTH_WAIT_POINTS + WRITE_POINTS
assert len(POINTS) == 20 and len(set(POINTS)) == 20


def _planned(config, phase: int) -> set[str]:
    plan = Workspace(str(config), {"phase": str(phase)}).plan().plan
    return {change.address for change in plan.actionable}


def _kill_apply(config, phase: int, point: tuple[str, int]) -> list[str]:
    """Start an apply, SIGKILL it at ``point``; return every line it printed."""
    kind, n = point
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    if kind == "state write":
        env["SERVECTL_FAULT_KILL_IN_STATE_WRITE"] = str(n)
    process = subprocess.Popen([SERVECTL, "-C", str(config), "apply", "--auto-approve", "--var", f"phase={phase}"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if kind == "after change" and len([x for x in lines if DONE.search(x)]) == n:
            process.send_signal(signal.SIGKILL)
            break
        started = STARTED.search(line)
        if kind == "waiting for health" and started and int(started.group(2)) == n:
            time.sleep(0.3)  # into the wait
            process.send_signal(signal.SIGKILL)
            break
    lines += [line.rstrip("\n") for line in process.stdout]
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"{point}: not killed\n" + "\n".join(lines)
    return lines


def kill_at_points(
    points: list[tuple[str, int]], tmp_path, main: str = MAIN, models: str = MODELS,
) -> tuple[int, int, int, Path]:
    """Apply the config (``main`` and its ``models``, two phases six changes apart) once, then for each point: kill
    an apply there, check the state and the next plan, force-unlock, converge. Returns (kills, corrupt states,
    converged rounds, the config dir)."""
    config = write_config(tmp_path / "crash", main, models=models)
    assert run_cli(config, "apply", "--auto-approve").code == 0
    store = LocalStateStore.in_dir(str(config))
    rounds = 0
    kills = corrupt = converged = 0
    phase = 0
    for point in points:
        phase = 1 - phase
        before = (config / "servectl.state.json").read_bytes()
        planned = _planned(config, phase)
        assert len(planned) == 6, planned
        lines = _kill_apply(config, phase, point)
        kills += 1
        done = {m.group(1) for m in (DONE.search(line) for line in lines) if m}

        text = (config / "servectl.state.json").read_text()
        try:
            StateDocument.from_json(text, "state")
        except Exception:  # noqa: BLE001 - counted, then reported below
            corrupt += 1
            continue
        if point[0] == "state write" and point[1] == 1:
            assert text.encode() == before  # killed in the first write: the old state stands whole

        holder = store._read_lock_info()
        assert holder is not None, f"{point}: no lock left by the killed apply"
        if rounds == 0:  # once is proof enough, and a CLI plan costs two seconds a round
            blocked = run_cli(config, "plan")
            assert blocked.code == 0  # plan reads without the lock
        assert run_cli(config, "force-unlock", holder.id).code == 0
        remaining = _planned(config, phase)
        assert remaining == planned - done, (point, sorted(remaining), sorted(planned - done), lines[-6:])

        finished = run_cli(config, "apply", "--auto-approve", "--var", f"phase={phase}", "--timeout", "90", timeout=240)
        assert finished.code == 0, (point, lines[-8:], finished.output)
        rounds += 1
        if not _planned(config, phase):
            converged += 1
        entries = store.history()
        state = StateDocument.from_json((config / "servectl.state.json").read_text(), "state")
        assert (len(entries), entries[-1].serial) == (rounds + 1, state.serial), (point, [e.serial for e in entries])
    print(f"kills={kills} corrupt_states={corrupt} converged={converged}")
    return kills, corrupt, converged, config
