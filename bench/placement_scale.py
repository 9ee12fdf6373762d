"""Pack 10,000 replicas of mixed shapes onto three node types (up to 500 nodes) and compare with the bound.

    python3 bench/placement_scale.py [--replicas 10000] [--repeat 5]

Prints the time per packing (target ≤ 1 s here), nodes used per type against
the lower bound (total demand ÷ node capacity, per resource), and the cost
against the cheapest fractional cover (target within 5 %). It also checks the
packing is deterministic: the same input twice gives the same packing.
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
import time

from servectl.planning.fleet import NodeShape, lower_bound, pack_fleet
from servectl.planning.placement import ReplicaDemand

SHAPES = [  # three shapes, on-demand us-east-1 prices; 500 nodes at most in all (checked below)
    NodeShape("cpu", cpus=32, gpus=0, max_nodes=500, hourly_price=1.536),  # m6i.8xlarge
    NodeShape("gpu", cpus=48, gpus=4, max_nodes=500, hourly_price=16.288 / 4),  # like a quarter of g5.48xlarge
    NodeShape("inf", cpus=96, gpus=0, resources={"neuron": 12}, max_nodes=500, hourly_price=12.98),  # inf2.48xlarge
]
MAX_NODES = 500
# (cpus, gpus, custom resources, share of the replicas)
MIXES = {}
MIXES["gpu-heavy"] = [
    (1.0, 0.0, {}, 0.40),
    (2.0, 0.0, {}, 0.15),
    (1.0, 1.0, {}, 0.10),
    (1.0, 0.5, {}, 0.10),
    (1.0, 0.25, {}, 0.15),
    (2.0, 0.0, {"neuron": 1}, 0.10),
]
MIXES["cpu-heavy"] = [  # most replicas CPU-only: the CPU node type and the GPU nodes' spare CPUs both matter
    (1.0, 0.0, {}, 0.45),
    (4.0, 0.0, {}, 0.30),
    (1.0, 1.0, {}, 0.05),
    (2.0, 0.5, {}, 0.05),
    (1.0, 0.25, {}, 0.10),
    (8.0, 0.0, {"neuron": 1}, 0.05),
]


def demands(total: int, mix: list, seed: int = 7) -> list[tuple[ReplicaDemand, int]]:
    """``total`` replicas in backends of 1–40 replicas each, shapes drawn from ``mix``."""
    rng = random.Random(seed)
    out: list[tuple[ReplicaDemand, int]] = []
    left = total
    index = 0
    weights = [share for *_, share in mix]
    while left > 0:
        cpus, gpus, resources, _ = rng.choices(mix, weights)[0]
        count = min(left, rng.randint(1, 40))
        out.append((ReplicaDemand(f"b{index:05d}", cpus=cpus, gpus=gpus, resources=dict(resources)), count))
        left -= count
        index += 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for name, mix in MIXES.items():
        print(f"== {name} mix ==")
        run(demands(args.replicas, mix), args)


def run(work: list[tuple[ReplicaDemand, int]], args: argparse.Namespace) -> None:
    times = []
    packing = None
    for _ in range(args.repeat):
        start = time.perf_counter()
        packing = pack_fleet(work, SHAPES)
        times.append(time.perf_counter() - start)
    assert packing is not None and packing.feasible, packing.unplaced
    assert sum(packing.nodes.values()) <= MAX_NODES, packing.nodes
    again = pack_fleet(list(work), SHAPES)
    deterministic = (again.nodes, again.replicas) == (packing.nodes, packing.replicas)
    bound = lower_bound(work, SHAPES)

    print(f"replicas={args.replicas} backends={len(work)} node types={len(SHAPES)} nodes used={sum(packing.nodes.values())}")
    print(f"pack time: median {statistics.median(times):.3f} s, max {max(times):.3f} s over {args.repeat} runs (target ≤ 1 s)")
    print("nodes per type vs the per-resource lower bound (demand ÷ one node's capacity):")
    for shape in SHAPES:
        own = {key: bound.per_resource.get(key, 0.0) / amount for key, amount in shape.amounts().items() if amount}
        # The resource only this type offers bounds its count; CPU is shared, so it bounds the total instead.
        exclusive = [key for key in own if key != "CPU"]
        floor = max((own[key] for key in exclusive), default=None)
        label = f"≥ {math.ceil(floor)} by {'/'.join(exclusive)}" if floor is not None else "CPU bound shared (below)"
        print(f"  {shape.name:4s} {packing.nodes[shape.name]:4d} nodes   bound {label}")
    cpu_capacity = sum(packing.nodes[s.name] * s.cpus for s in SHAPES)
    print(f"  CPU: {bound.per_resource['CPU']:.0f} needed, {cpu_capacity:.0f} on the nodes used "
          f"({cpu_capacity / bound.per_resource['CPU']:.3f}× the demand)")
    ratio = packing.cost / bound.cheapest_cost
    fractional = ", ".join(f"{name} {count:.2f}" for name, count in bound.cheapest_nodes.items())
    print(f"cost: ${packing.cost:,.2f}/h vs the cheapest fractional cover ${bound.cheapest_cost:,.2f}/h ({fractional}): "
          f"{ratio:.4f}× (target ≤ 1.05×)")
    print(f"deterministic: {deterministic}")


if __name__ == "__main__":
    main()
