"""A plan is plain data: ordered resource changes plus the placement they need.

Nothing renders or applies here; ``render`` reads a Plan and ``apply`` carries it out.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Optional


# The version of `plan --json` (and of the plan inside a saved plan file); see the README's JSON section.
PLAN_JSON_VERSION = 1


class Action(str, Enum):
    NOOP = "no-op"
    CREATE = "create"
    UPDATE = "update"  # in place: running replicas keep running
    REPLACE = "replace"  # replicas restart (rolling), the route stays up
    DELETE = "delete"


@dataclass
class AttributeDiff:
    path: str
    before: Any
    after: Any
    forces_replacement: bool = False


@dataclass
class ResourceChange:
    address: str
    kind: str
    name: str
    action: Action
    before: Optional[dict[str, Any]]
    after: Optional[dict[str, Any]]
    diffs: list[AttributeDiff] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["action"] = self.action.value
        return body

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> "ResourceChange":
        return cls(
            address=body["address"],
            kind=body["kind"],
            name=body["name"],
            action=Action(body["action"]),
            before=body["before"],
            after=body["after"],
            diffs=[AttributeDiff(**d) for d in body["diffs"]],
            reasons=list(body["reasons"]),
        )


@dataclass
class Plan:
    changes: list[ResourceChange]  # in apply order; no-ops included for display
    placement: dict[str, Any]
    state_lineage: Optional[str]
    state_serial: int
    provider: dict[str, Any]
    cluster_source: str  # "live" or "projected" (embedded cluster not started yet)
    replicas_before: int
    replicas_after: int
    placement_before: dict[str, Any] = field(default_factory=dict)
    destroy: bool = False
    targets: list[str] = field(default_factory=list)  # --target: only these (and what they need) are planned
    replicas_max_after: Optional[int] = None  # above replicas_after when backends autoscale
    # The code that ships (servectl.bundle.Listing.summary): file count, what .servectlignore and the saved-plan
    # rule leave out. Empty for a destroy, a rollback or a saved plan (their code is already frozen).
    bundle: dict[str, Any] = field(default_factory=dict)

    @property
    def actionable(self) -> list[ResourceChange]:
        return [c for c in self.changes if c.action is not Action.NOOP]

    def has_changes(self) -> bool:
        return bool(self.actionable)

    def count(self, action: Action) -> int:
        return sum(1 for c in self.changes if c.action is action)

    def tally(self) -> str:
        return (
            f"{self.count(Action.CREATE)} added, {self.count(Action.UPDATE)} changed, "
            f"{self.count(Action.REPLACE)} replaced, {self.count(Action.DELETE)} destroyed"
        )

    @property
    def replica_delta(self) -> int:
        return self.replicas_after - self.replicas_before

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> "Plan":
        return cls(
            changes=[ResourceChange.from_dict(c) for c in body["changes"]],
            placement=dict(body["placement"]),
            state_lineage=body["state_lineage"],
            state_serial=int(body["state_serial"]),
            provider=dict(body["provider"]),
            cluster_source=str(body["cluster_source"]),
            replicas_before=int(body["replicas_before"]),
            replicas_after=int(body["replicas_after"]),
            placement_before=dict(body.get("placement_before") or {}),
            destroy=bool(body.get("destroy", False)),
            targets=list(body.get("targets") or []),
            replicas_max_after=body.get("replicas_max_after"),
            bundle=dict(body.get("bundle") or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": PLAN_JSON_VERSION,
            "changes": [c.to_dict() for c in self.changes],
            "placement": self.placement,
            "placement_before": self.placement_before,
            "state_lineage": self.state_lineage,
            "state_serial": self.state_serial,
            "provider": self.provider,
            "cluster_source": self.cluster_source,
            "replicas_before": self.replicas_before,
            "replicas_after": self.replicas_after,
            "replicas_max_after": self.replicas_max_after,
            "destroy": self.destroy,
            "targets": self.targets,
            "bundle": self.bundle,
            "summary": {
                "add": self.count(Action.CREATE),
                "change": self.count(Action.UPDATE),
                "replace": self.count(Action.REPLACE),
                "destroy": self.count(Action.DELETE),
                "replica_delta": self.replica_delta,
            },
        }
