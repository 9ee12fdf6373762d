"""Pack replicas onto nodes the way Ray's scheduler will, before anything is deployed.

Today's Ray Serve waits forever for a replica that no node can hold; servectl
runs this packing at plan time instead and refuses such a plan with the
numbers. Quantities are counted in Ray's own fixed-point unit (1/10000), so
ten replicas of 0.1 CPU fit one CPU exactly as they do in Ray. A fractional
GPU request must fit on a single GPU, as Ray requires.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from servectl.model.capacity import NodeCapacity, PlacementSummary

UNIT = 10_000


def units(amount: float) -> int:
    """An amount (CPUs, GPUs, a custom resource) in Ray's fixed-point unit: ``amount`` × 10000, rounded to an int."""
    return int(round(amount * UNIT))


@dataclass(frozen=True)
class ReplicaDemand:
    """What one replica of a backend asks for (its ``ray_actor_options``)."""

    backend: str
    cpus: float
    gpus: float
    memory: Optional[float] = None
    resources: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_actor_options(cls, backend: str, options: dict[str, Any]) -> "ReplicaDemand":
        """One replica's demand from a backend's ``ray_actor_options`` dict.

        ``num_cpus`` defaults to 1 and ``num_gpus`` to 0; ``memory`` (bytes) and ``resources`` (custom name -> amount)
        are taken as given, absent meaning none.
        """
        return cls(
            backend=backend,
            cpus=float(options.get("num_cpus", 1.0)),
            gpus=float(options.get("num_gpus", 0.0)),
            memory=options.get("memory"),
            resources=dict(options.get("resources") or {}),
        )

    def describe(self) -> str:
        """The demand as plan errors show it, e.g. ``CPU 0.5, GPU 1, memory 2.00 GiB, accel 1``."""
        parts = [f"CPU {self.cpus:g}"]
        if self.gpus:
            parts.append(f"GPU {self.gpus:g}")
        if self.memory:
            parts.append(f"memory {self.memory / 2**30:.2f} GiB")
        parts += [f"{key} {amount:g}" for key, amount in sorted(self.resources.items())]
        return ", ".join(parts)


@dataclass
class NodeRoom:
    """What is left of one node while replicas are packed onto it, in Ray's fixed-point units (1/10000).

    Shared by the plan's packer (``pack``) and the AWS fleet packer
    (``servectl.planning.fleet``): one piece of code for the placement rules.
    """

    capacity: NodeCapacity
    cpus: int
    gpu_slots: list[int]
    memory: Optional[int]
    resources: dict[str, int]
    replicas: dict[str, int] = field(default_factory=dict)
    gpu_holders: list[dict[str, int]] = field(default_factory=list)  # per GPU: backend -> units held

    @classmethod
    def of(cls, node: NodeCapacity) -> "NodeRoom":
        """An empty node: all of ``node``'s CPUs, GPUs (each a whole slot), memory and custom resources free."""
        return cls(
            capacity=node,
            cpus=units(node.cpus),
            gpu_slots=[UNIT] * int(node.gpus),
            memory=None if node.memory is None else int(node.memory),
            resources={key: units(amount) for key, amount in node.resources.items()},
            gpu_holders=[{} for _ in range(int(node.gpus))],
        )

    def try_take(self, demand: ReplicaDemand) -> bool:
        """Place one replica of ``demand`` here if it fits (a fractional GPU on the best-fitting GPU, whole GPUs on
        untouched ones, as Ray places them); returns whether it did, taking its resources when it did."""
        cpus = units(demand.cpus)
        if cpus > self.cpus:
            return False
        if demand.memory and self.memory is not None and demand.memory > self.memory:
            return False
        for key, amount in demand.resources.items():
            if units(amount) > self.resources.get(key, 0):
                return False
        gpu_take = self._gpu_choice(demand.gpus)
        if gpu_take is None:
            return False
        self.cpus -= cpus
        if demand.memory and self.memory is not None:
            self.memory -= int(demand.memory)
        for key, amount in demand.resources.items():
            self.resources[key] -= units(amount)
        for index, amount in gpu_take:
            self.gpu_slots[index] -= amount
            holders = self.gpu_holders[index]
            holders[demand.backend] = holders.get(demand.backend, 0) + amount
        self.replicas[demand.backend] = self.replicas.get(demand.backend, 0) + 1
        return True

    def take_many(self, demand: ReplicaDemand, count: int) -> int:
        """Take up to ``count`` replicas of ``demand`` at once; returns how many this node took.

        Without GPUs every replica of a shape takes the same amounts, so the
        number that fits is a division per resource, whatever ``count`` is (a
        shape that asks for nothing fits any number). A GPU replica picks its GPU
        (best fit), so those go one at a time; each takes part of a finite GPU,
        so the loop is bounded by the node's GPUs, not by ``count``.
        """
        if count <= 0:
            return 0
        if demand.gpus > 0:
            taken = 0
            while taken < count and self.try_take(demand):
                taken += 1
            return taken
        fits = count
        cpus = units(demand.cpus)
        if cpus > 0:
            fits = min(fits, self.cpus // cpus)
        if demand.memory and self.memory is not None:
            fits = min(fits, self.memory // int(demand.memory))
        for key, amount in demand.resources.items():
            need = units(amount)
            if need > 0:
                fits = min(fits, self.resources.get(key, 0) // need)
        fits = max(0, fits)
        if fits:
            self.cpus -= cpus * fits
            if demand.memory and self.memory is not None:
                self.memory -= int(demand.memory) * fits
            for key, amount in demand.resources.items():
                self.resources[key] -= units(amount) * fits
            self.replicas[demand.backend] = self.replicas.get(demand.backend, 0) + fits
        return fits

    def _gpu_choice(self, gpus: float) -> Optional[list[tuple[int, int]]]:
        if gpus <= 0:
            return []
        if gpus >= 1:  # whole GPUs: that many untouched GPUs
            free = [i for i, left in enumerate(self.gpu_slots) if left == UNIT][: int(gpus)]
            return [(i, UNIT) for i in free] if len(free) == int(gpus) else None
        need = units(gpus)
        fitting = [(left, i) for i, left in enumerate(self.gpu_slots) if left >= need]
        if not fitting:
            return None
        _, best = min(fitting)  # best fit keeps whole GPUs free for whole-GPU replicas
        return [(best, need)]


@dataclass
class NodePlacement:
    """One node after packing: replicas per backend on it, CPUs and GPUs used of its total.

    ``gpu_slots_used`` is each GPU's used share (a fraction of one GPU); ``gpu_shares`` says, per GPU, which
    backends hold how much of it.
    """

    node: str
    replicas: dict[str, int]
    cpus_used: float
    cpus_total: float
    gpus_used: float
    gpus_total: int
    gpu_slots_used: list[float]
    gpu_shares: list[dict[str, float]] = field(default_factory=list)  # per GPU: backend -> GPUs held


@dataclass
class Placement:
    """What ``pack`` returns: every node's placement, and the ``(demand, count)`` pairs that fit on no node."""

    nodes: list[NodePlacement]
    unplaced: list[tuple[ReplicaDemand, int]]

    @property
    def replicas(self) -> int:
        """Replicas placed, over all nodes."""
        return sum(sum(n.replicas.values()) for n in self.nodes)

    def nodes_used(self) -> int:
        """How many nodes hold at least one replica."""
        return sum(1 for n in self.nodes if n.replicas)

    def gpu_nodes_used(self) -> int:
        """How many nodes have any part of a GPU in use."""
        return sum(1 for n in self.nodes if n.gpus_used > 0)

    def summary(self) -> PlacementSummary:
        """The placement as plain data, as plans record it: totals, and per node its replicas by backend.

        Per node ``cpus`` and ``gpus`` are ``[used, total]`` pairs, with ``gpu_slots_used`` and ``gpu_shares`` as on
        ``NodePlacement``; amounts are rounded to 4 places. Unplaced replicas are not in it.
        """
        return {
            "replicas": self.replicas,
            "nodes_total": len(self.nodes),
            "nodes_used": self.nodes_used(),
            "gpu_nodes_used": self.gpu_nodes_used(),
            "cpus_used": round(sum(n.cpus_used for n in self.nodes), 4),
            "cpus_total": round(sum(n.cpus_total for n in self.nodes), 4),
            "gpus_used": round(sum(n.gpus_used for n in self.nodes), 4),
            "gpus_total": sum(n.gpus_total for n in self.nodes),
            "nodes": [
                {
                    "node": n.node,
                    "replicas": dict(sorted(n.replicas.items())),
                    "cpus": [round(n.cpus_used, 4), n.cpus_total],
                    "gpus": [round(n.gpus_used, 4), n.gpus_total],
                    "gpu_slots_used": n.gpu_slots_used,
                    "gpu_shares": n.gpu_shares,
                }
                for n in self.nodes
            ],
        }


def pack(demands: list[tuple[ReplicaDemand, int]], nodes: list[NodeCapacity]) -> Placement:
    """First-fit decreasing: the largest replicas first, each onto the first node that holds it.

    Work is per shape and node, not per replica: a count of any size is placed
    (or found not to fit) in time that grows with the nodes and GPUs only.
    """
    rooms = [NodeRoom.of(node) for node in nodes]
    order = sorted(
        demands,
        key=lambda item: (-item[0].gpus, -item[0].cpus, -(item[0].memory or 0), item[0].backend),
    )
    unplaced: list[tuple[ReplicaDemand, int]] = []
    # Nodes only fill up, so a replica of a shape that failed on node k fails
    # there again: each shape resumes at the node its last replica landed on.
    resume: dict[tuple, int] = {}
    for demand, count in order:
        shape = (demand.cpus, demand.gpus, demand.memory, tuple(sorted(demand.resources.items())))
        left = count
        index = resume.get(shape, 0)
        while left and index < len(rooms):
            left -= rooms[index].take_many(demand, left)
            if left:
                index += 1
        resume[shape] = index
        missing = left
        if missing:
            unplaced.append((demand, missing))
    placed = []
    for room in rooms:
        node = room.capacity
        slots_used = [round((UNIT - left) / UNIT, 4) for left in room.gpu_slots]
        placed.append(
            NodePlacement(
                node=node.name,
                replicas=room.replicas,
                cpus_used=(units(node.cpus) - room.cpus) / UNIT,
                cpus_total=node.cpus,
                gpus_used=sum(slots_used),
                gpus_total=int(node.gpus),
                gpu_slots_used=slots_used,
                gpu_shares=[
                    {backend: round(held / UNIT, 4) for backend, held in sorted(holders.items())}
                    for holders in room.gpu_holders
                ],
            )
        )
    return Placement(nodes=placed, unplaced=unplaced)


def describe_cluster(nodes: list[NodeCapacity]) -> str:
    """The nodes' totals for error messages, e.g. ``2 nodes: CPU 16, GPU 1, accel 2``; ``no nodes`` when empty."""
    if not nodes:
        return "no nodes"
    cpus = sum(n.cpus for n in nodes)
    gpus = sum(n.gpus for n in nodes)
    extra: dict[str, float] = {}
    for n in nodes:
        for key, amount in n.resources.items():
            extra[key] = extra.get(key, 0) + amount
    text = f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}: CPU {cpus:g}, GPU {gpus}"
    if extra:
        text += ", " + ", ".join(f"{k} {v:g}" for k, v in sorted(extra.items()))
    return text
