"""Plan time at scale: 1,000 backends and 1,000 endpoints against a state of the same size with 10 changes.

Prints seconds for loading the config alone and for a whole plan (load + read
state + diff + placement), and their ratio. Not a timed test: run it by hand,
and compare ratios (these machines are shared; absolute times drift).

With ``--cli``, it also times the whole command as a user meets it: ``servectl
plan`` and ``servectl plan --json`` as processes, output to a file, on configs
of 1,000 and 10,000 resources (half backends, half endpoints) with nothing
applied yet (every resource a create: the most there is to print), against
``servectl validate`` on the same config (the process, the imports and the
config load: the baseline). Targets: ≤ 2 s at 1,000 and ≤ 5 s at 10,000.

    python bench/plan_scale.py [--backends 1000] [--repeat 5] [--json] [--cli]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from servectl.loading.loader import load_config  # noqa: E402
from servectl.model.capacity import NodeCapacity  # noqa: E402
from servectl.planning.planner import plan_changes  # noqa: E402
from servectl.state.document import ResourceState, StateDocument  # noqa: E402
from servectl.state.local import LocalStateStore  # noqa: E402

MAIN = '''
from servectl import Backend, Endpoint, LocalRay
LocalRay(num_cpus=1000)
for i in range({n}):
    b = Backend(f"b{{i}}", "models:Model", i, num_replicas=1, ray_actor_options={{"num_cpus": 0.5}}, user_config={{"k": i}})
    Endpoint(f"e{{i}}", route=f"/e{{i}}", backend=b)
'''
MODELS = "class Model:\n    def __init__(self, i): self.i = i\n    def __call__(self, request): return self.i\n"


def build(directory: Path, n: int, changes: int) -> None:
    (directory / "main.py").write_text(MAIN.format(n=n))
    (directory / "models.py").write_text(MODELS)
    desired = load_config(str(directory))
    document = StateDocument.new()
    document.provider = desired.provider.attributes()
    for address, spec in desired.resources.items():
        document.resources[address] = ResourceState(spec.kind, spec.name, json.loads(json.dumps(spec.attributes)))
    for i in range(changes):  # the state lags the config by `changes` replica counts
        document.resources[f"backend.b{i}"].attributes["num_replicas"] = 2
    document.stamp("bench")
    LocalStateStore.in_dir(str(directory)).write(document)


CLI_MAIN = '''
from servectl import Backend, Endpoint, LocalRay
LocalRay(num_cpus=10000)
for i in range({n}):
    b = Backend(f"b{{i}}", "models:Model", i, ray_actor_options={{"num_cpus": 0.1}}, user_config={{"k": i}})
    Endpoint(f"e{{i}}", route=f"/e{{i}}", backend=b)
'''
SERVECTL = shutil.which("servectl") or str(Path(sys.executable).parent / "servectl")


def cli_seconds(directory: Path, args: list[str], repeat: int) -> float:
    """Median wall seconds of ``servectl -C directory ARGS > file`` (a fresh process each time)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVECTL_RAY")}
    samples = []
    for _ in range(repeat):
        with open(directory / "out.txt", "wb") as out:
            start = time.perf_counter()
            done = subprocess.run([SERVECTL, "-C", str(directory), *args], stdout=out, stderr=subprocess.PIPE, env=env)
            samples.append(time.perf_counter() - start)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
    return statistics.median(samples)


def cli_case(resources: int, repeat: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "main.py").write_text(CLI_MAIN.format(n=resources // 2))
        (directory / "models.py").write_text(MODELS)
        validate = cli_seconds(directory, ["validate"], repeat)
        plan = cli_seconds(directory, ["plan"], repeat)
        plan_bytes = (directory / "out.txt").stat().st_size
        plan_json = cli_seconds(directory, ["plan", "--json"], repeat)
    return {"resources": resources, "validate_seconds": round(validate, 3), "plan_seconds": round(plan, 3),
            "plan_json_seconds": round(plan_json, 3), "plan_output_bytes": plan_bytes,
            "plan_vs_validate": round(plan / validate, 2), "plan_json_vs_validate": round(plan_json / validate, 2)}


def timed(func, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cli", action="store_true", help="also time `servectl plan` as a process at 1,000 and 10,000")
    args = parser.parse_args()
    nodes = [NodeCapacity(f"n{i}", cpus=16, gpus=0) for i in range(64)]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        build(directory, args.backends, args.changes)
        store = LocalStateStore.in_dir(str(directory))

        def whole_plan():
            plan = plan_changes(load_config(str(directory)), store.read(), nodes)
            assert len(plan.actionable) == args.changes, len(plan.actionable)

        load_s = timed(lambda: load_config(str(directory)), args.repeat)
        plan_s = timed(whole_plan, args.repeat)
    result = {
        "backends": args.backends,
        "endpoints": args.backends,
        "changes": args.changes,
        "load_seconds": round(load_s, 4),
        "plan_seconds": round(plan_s, 4),
        "plan_vs_load_ratio": round(plan_s / load_s, 2),
    }
    if args.cli:
        result["cli"] = [cli_case(n, max(1, min(args.repeat, 3))) for n in (1_000, 10_000)]
    if args.json:
        print(json.dumps(result))
        return
    print(f"config load: {load_s:.3f}s   whole plan: {plan_s:.3f}s   plan/load ratio: {plan_s / load_s:.2f}x "
          f"(targets: plan <= 1s, ratio <= 3x)")
    for case in result.get("cli", []):
        target = 2.0 if case["resources"] <= 1_000 else 5.0
        print(f"servectl plan, {case['resources']:,} resources: validate {case['validate_seconds']:.2f}s, "
              f"plan {case['plan_seconds']:.2f}s ({case['plan_vs_validate']:.2f}x), plan --json "
              f"{case['plan_json_seconds']:.2f}s ({case['plan_json_vs_validate']:.2f}x); target <= {target:g}s")


if __name__ == "__main__":
    main()
