"""How many nodes of each type the replicas need: packing onto node types that can grow.

``placement.pack`` fills a fixed list of nodes (a running local cluster).
Here the nodes do not exist yet: each replica goes onto the first open node
with room (first-fit decreasing, largest replicas first, so small CPU-only
replicas fill what GPU replicas left), and when none has room a node of the
type that holds it most cheaply is opened. The result is deterministic — the
same input gives the same packing, so plans are stable — and is compared
against a lower bound: the cheapest *fractional* cover of the total demand.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Optional

from servectl.model.capacity import NodeCapacity
from servectl.planning.placement import NodeRoom, ReplicaDemand


@dataclass(frozen=True)
class NodeShape:
    """One node type as the packer sees it: what a node offers, how many may run, what one costs."""

    name: str
    cpus: float
    gpus: int
    resources: dict[str, float] = field(default_factory=dict)
    memory: Optional[float] = None
    min_nodes: int = 0
    max_nodes: int = 1_000_000
    hourly_price: Optional[float] = None

    def capacity(self, index: int) -> NodeCapacity:
        """Node number ``index`` of this type as a ``NodeCapacity`` named ``<type>-<index>``."""
        return NodeCapacity(
            name=f"{self.name}-{index}", cpus=self.cpus, gpus=self.gpus, memory=self.memory,
            resources=dict(self.resources),
        )

    def amounts(self) -> dict[str, float]:
        """Capacity per resource name, as Ray names them."""
        return {"CPU": self.cpus, "GPU": float(self.gpus), **self.resources}


@dataclass
class FleetPacking:
    """Nodes per type for one set of replicas, and what could not be placed."""

    nodes: dict[str, int]  # type name -> nodes needed (at least its min_nodes)
    used: dict[str, int]  # type name -> nodes holding replicas
    replicas: dict[str, dict[str, int]]  # type name -> backend -> replicas on nodes of that type
    unplaced: list[tuple[ReplicaDemand, int]]
    cost: Optional[float]  # per hour, when every type has a price

    @property
    def feasible(self) -> bool:
        """True when every replica found a node."""
        return not self.unplaced


def _demand_amounts(demand: ReplicaDemand) -> dict[str, float]:
    return {"CPU": demand.cpus, "GPU": demand.gpus, **demand.resources}


def fits_empty(shape: NodeShape, demand: ReplicaDemand) -> bool:
    """Whether one replica fits an empty node of ``shape`` at all."""
    return NodeRoom.of(shape.capacity(0)).try_take(demand)


def _opening_cost(shape: NodeShape, demand: ReplicaDemand) -> tuple:
    """How dear it is to open a node of ``shape`` for ``demand``: lower is better, ties broken by name.

    With prices: the node's price per unit of the replica's scarcest need
    (so a CPU replica opens the cheap CPU node, not a GPU node with as many
    CPUs). Without: the smallest node that holds it, GPUs weighing most.
    """
    need = _demand_amounts(demand)
    offer = shape.amounts()
    if shape.hourly_price is not None:
        share = max((need[key] / offer[key] for key in need if need[key] > 0 and offer.get(key)), default=0.0)
        per_replica = shape.hourly_price * share if share else shape.hourly_price
        return (0, per_replica, shape.name)
    extra = sorted(key for key in offer if key not in ("CPU", "GPU"))
    return (1, offer["GPU"], tuple(offer[key] for key in extra), offer["CPU"], shape.name)


def pack_fleet(demands: list[tuple[ReplicaDemand, int]], shapes: list[NodeShape]) -> FleetPacking:
    """First-fit decreasing over open nodes; open the cheapest fitting type when none has room."""
    order = sorted(
        (item for item in demands if item[1] > 0),
        key=lambda item: (
            -item[0].gpus, -sum(item[0].resources.values()), -item[0].cpus, -(item[0].memory or 0), item[0].backend,
        ),
    )
    rooms: list[NodeRoom] = []
    room_type: list[str] = []
    opened = {shape.name: 0 for shape in shapes}
    replicas: dict[str, dict[str, int]] = {shape.name: {} for shape in shapes}
    unplaced: list[tuple[ReplicaDemand, int]] = []
    resume: dict[tuple, int] = {}  # nodes only fill up: a shape that failed on node k fails there again
    for demand, count in order:
        key = (demand.cpus, demand.gpus, demand.memory, tuple(sorted(demand.resources.items())))
        candidates = sorted(
            (shape for shape in shapes if fits_empty(shape, demand)), key=lambda s: _opening_cost(s, demand)
        )
        missing = 0
        left = count
        index = resume.get(key, 0)
        while left:
            while index < len(rooms) and left:
                took = rooms[index].take_many(demand, left)
                if took:
                    per_type = replicas[room_type[index]]
                    per_type[demand.backend] = per_type.get(demand.backend, 0) + took
                    left -= took
                if left:
                    index += 1
            if not left:
                break
            shape = next((s for s in candidates if opened[s.name] < s.max_nodes), None)
            if shape is None:
                missing = left
                break
            rooms.append(NodeRoom.of(shape.capacity(opened[shape.name])))  # the next loop fills it from `index`
            room_type.append(shape.name)
            opened[shape.name] += 1
        resume[key] = index
        if missing:
            unplaced.append((demand, missing))
    nodes = {shape.name: max(shape.min_nodes, opened[shape.name]) for shape in shapes}
    priced = all(shape.hourly_price is not None for shape in shapes)
    cost = sum(nodes[s.name] * (s.hourly_price or 0.0) for s in shapes) if priced else None
    return FleetPacking(
        nodes=nodes, used=dict(opened), replicas={k: dict(sorted(v.items())) for k, v in replicas.items()},
        unplaced=unplaced, cost=cost,
    )


@dataclass
class LowerBound:
    """What no packing can beat: the total demand per resource, and the cheapest fractional cover of it."""

    per_resource: dict[str, float]  # total demand per resource
    cheapest_cost: Optional[float]  # cheapest fractional cover of every resource (prices known)
    cheapest_nodes: dict[str, float]  # the fractional node counts of that cover


def lower_bound(demands: list[tuple[ReplicaDemand, int]], shapes: list[NodeShape]) -> LowerBound:
    """The cheapest fractional cover: minimise Σ price·n subject to Σ n·capacity ≥ demand per resource.

    A tiny linear programme (a handful of types and resources), solved exactly
    by checking every vertex: each is where as many constraints as there are
    types hold with equality.
    """
    total: dict[str, float] = {}
    for demand, count in demands:
        for key, amount in _demand_amounts(demand).items():
            if amount:
                total[key] = total.get(key, 0.0) + amount * count
    prices = [s.hourly_price if s.hourly_price is not None else 1.0 for s in shapes]  # unpriced: count nodes
    keys = sorted(total)
    offers = [[s.amounts().get(key, 0.0) for s in shapes] for key in keys]
    rows = [(offers[i], total[keys[i]]) for i in range(len(keys))]
    rows += [([1.0 if j == i else 0.0 for j in range(len(shapes))], 0.0) for i in range(len(shapes))]  # n ≥ 0
    best: Optional[tuple[float, list[float]]] = None
    for chosen in itertools.combinations(range(len(rows)), len(shapes)):
        solution = _solve([rows[i][0] for i in chosen], [rows[i][1] for i in chosen])
        if solution is None or any(n < -1e-9 for n in solution):
            continue
        if any(sum(a * n for a, n in zip(row, solution)) < need - 1e-6 for row, need in rows):
            continue
        cost = sum(p * n for p, n in zip(prices, solution))
        if best is None or cost < best[0] - 1e-12:
            best = (cost, solution)
    return LowerBound(
        per_resource=total,
        cheapest_cost=best[0] if best else None,
        cheapest_nodes={s.name: max(0.0, n) for s, n in zip(shapes, best[1])} if best else {},
    )


def _solve(matrix: list[list[float]], rhs: list[float]) -> Optional[list[float]]:
    """Gaussian elimination with partial pivoting; None when singular."""
    size = len(matrix)
    rows = [list(map(float, row)) + [float(b)] for row, b in zip(matrix, rhs)]
    for col in range(size):
        pivot = max(range(col, size), key=lambda r: abs(rows[r][col]))
        if abs(rows[pivot][col]) < 1e-12:
            return None
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(size):
            if r != col and rows[r][col]:
                factor = rows[r][col] / rows[col][col]
                rows[r] = [a - factor * b for a, b in zip(rows[r], rows[col])]
    return [rows[i][size] / rows[i][i] for i in range(size)]

