"""Nodes and placements as records: what a node offers, and where a plan puts replicas.

The planner fills them (``servectl.planning.placement``), plans and ``status``
carry them, views render them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, TypedDict


@dataclass(frozen=True)
class NodeCapacity:
    """What one node offers to replicas."""

    name: str
    cpus: float
    gpus: int
    memory: Optional[float] = None  # bytes; None when unknown (not checked)
    resources: dict[str, float] = field(default_factory=dict)



class NodeSummary(TypedDict):
    """One node in a placement summary."""

    node: str
    replicas: dict[str, int]  # backend -> replicas on this node
    cpus: list[float]  # [used, total]
    gpus: list[float]  # [used, total]
    gpu_slots_used: list[float]  # per GPU, the fraction held
    gpu_shares: list[dict[str, float]]  # per GPU: backend -> fraction of it


class PlacementSummary(TypedDict, total=False):
    """A placement as a plan records it (``Plan.placement``): totals and, per node, what lands there. AWS plans add
    ``node_groups`` and ``hourly_cost`` (a provider plugin's ``summary``, ``servectl.model.kinds``)."""

    replicas: int
    nodes_total: int
    nodes_used: int
    gpu_nodes_used: int
    cpus_used: float
    cpus_total: float
    gpus_used: float
    gpus_total: int
    nodes: list[NodeSummary]
    node_groups: dict[str, dict[str, Any]]  # node type -> instance_type, min_size, desired_capacity, max_size
    hourly_cost: Optional[float]  # USD per hour at the desired sizes; None when a node type has no price
