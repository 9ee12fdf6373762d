"""Plan time at scale: 1,000 backends and 1,000 endpoints against a state of the same size with 10 changes.

Prints seconds for loading the config alone and for a whole plan (load + read
state + diff + placement), and their ratio. Not a timed test: run it by hand,
and compare ratios (these machines are shared; absolute times drift).

    python bench/plan_scale.py [--backends 1000] [--repeat 5] [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from servectl.loader import load_config  # noqa: E402
from servectl.placement import NodeCapacity  # noqa: E402
from servectl.planner import plan_changes  # noqa: E402
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
    if args.json:
        print(json.dumps(result))
    else:
        print(f"config load: {load_s:.3f}s   whole plan: {plan_s:.3f}s   plan/load ratio: {plan_s / load_s:.2f}x "
              f"(targets: plan <= 1s, ratio <= 3x)")


if __name__ == "__main__":
    main()
