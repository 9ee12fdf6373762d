"""Packing replicas onto node types that grow: node counts per type, limits, costs and the bound."""
from __future__ import annotations

import pytest

from servectl.planning.fleet import NodeShape, lower_bound, pack_fleet
from servectl.planning.placement import ReplicaDemand

CPU = NodeShape("cpu", cpus=4, gpus=0, min_nodes=1, max_nodes=10, hourly_price=0.192)
GPU = NodeShape("gpu", cpus=4, gpus=1, min_nodes=0, max_nodes=8, hourly_price=1.006)


def demand(name: str, cpus: float = 1.0, gpus: float = 0.0, **resources: float) -> ReplicaDemand:
    return ReplicaDemand(name, cpus=cpus, gpus=gpus, resources=resources)


def test_gpu_replicas_open_gpu_nodes_and_cpu_replicas_fill_what_they_leave():
    packing = pack_fleet([(demand("vision", 1, 1), 3), (demand("text", 1), 9)], [CPU, GPU])
    assert packing.feasible
    # 3 GPU nodes each keep 3 spare CPUs: 9 CPU replicas fit there, so the cpu group stays at its minimum.
    assert packing.nodes == {"cpu": 1, "gpu": 3}
    assert packing.used == {"cpu": 0, "gpu": 3}
    assert packing.replicas["gpu"] == {"text": 9, "vision": 3}
    assert packing.cost == pytest.approx(0.192 + 3 * 1.006)


def test_fractional_gpus_share_a_gpu_and_cpu_overflow_opens_the_cheap_type():
    packing = pack_fleet([(demand("half", 1, 0.5), 4), (demand("quarter", 0.5, 0.25), 4), (demand("cpu", 2), 6)], [CPU, GPU])
    # 4 × 0.5 + 4 × 0.25 = 3 GPUs; their CPUs (6) leave 6 spare on 3 GPU nodes, the CPU replicas need 12.
    assert packing.nodes["gpu"] == 3
    assert packing.nodes["cpu"] == 2  # 3 of the 2-CPU replicas on GPU nodes, 3 on cpu nodes (2 per node)
    assert sum(packing.replicas["cpu"].values()) + packing.replicas["gpu"].get("cpu", 0) == 6


def test_same_input_same_packing():
    work = [(demand(f"b{i}", cpus=0.5 + (i % 3), gpus=(0.25 if i % 4 == 0 else 0)), 1 + i % 5) for i in range(60)]
    first = pack_fleet(work, [CPU, GPU])
    second = pack_fleet(list(reversed(work)), [CPU, GPU])
    assert (first.nodes, first.replicas) == (second.nodes, second.replicas)


def test_more_than_max_workers_or_an_unknown_resource_is_unplaced():
    packing = pack_fleet([(demand("big", 1, 1), 9)], [CPU, GPU])
    assert packing.nodes["gpu"] == 8 and not packing.feasible
    assert [(d.backend, n) for d, n in packing.unplaced] == [("big", 1)]
    nowhere = pack_fleet([(demand("tpu", 1, 0, tpu=1), 2)], [CPU, GPU])
    assert [(d.backend, n) for d, n in nowhere.unplaced] == [("tpu", 2)]


def test_without_prices_the_smallest_fitting_type_opens():
    unpriced = [NodeShape("gpu", cpus=8, gpus=1), NodeShape("cpu", cpus=8, gpus=0)]
    packing = pack_fleet([(demand("text", 1), 10)], unpriced)
    assert packing.nodes == {"gpu": 0, "cpu": 2} and packing.cost is None


def test_lower_bound_is_the_cheapest_fractional_cover():
    work = [(demand("vision", 1, 1), 3), (demand("text", 2), 10)]
    bound = lower_bound(work, [CPU, GPU])
    # 3 GPUs force 3 gpu nodes (12 CPUs); 23 CPUs in all leave 11 for cpu nodes: 2.75 of them.
    assert bound.per_resource == {"CPU": 23.0, "GPU": 3.0}
    assert bound.cheapest_nodes["gpu"] == pytest.approx(3.0)
    assert bound.cheapest_nodes["cpu"] == pytest.approx(2.75)
    assert bound.cheapest_cost == pytest.approx(3 * 1.006 + 2.75 * 0.192)
    packing = pack_fleet(work, [CPU, GPU])
    assert packing.cost >= bound.cheapest_cost
