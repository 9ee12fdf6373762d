"""A plan is plain data: ordered resource changes plus the placement they need.

Nothing renders or applies here; ``render`` reads a Plan and ``apply`` carries it out.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from servectl.model.desired import ProviderRecord
    from servectl.model.capacity import PlacementSummary


# The version of `plan --json` (and of the plan inside a saved plan file); see docs/reference/json.md.
PLAN_JSON_VERSION = 1


class Action(str, Enum):
    """What a plan does to one resource, as Terraform's plan actions; REPLACE stands for Terraform's
    delete-and-create pair and is carried out as a rolling restart of the replicas.
    """

    NOOP = "no-op"
    CREATE = "create"
    UPDATE = "update"  # in place: running replicas keep running
    REPLACE = "replace"  # replicas restart (rolling), the route stays up
    DELETE = "delete"


@dataclass
class AttributeDiff:
    """One attribute value that differs: its dotted path (e.g. ``ray_actor_options.num_cpus``), the values before
    and after, and whether the change restarts replicas (Terraform's "forces replacement").
    """

    path: str
    before: Any
    after: Any
    forces_replacement: bool = False


@dataclass
class ResourceChange:
    """One resource's planned change, as Terraform's ResourceChange: ``before``/``after`` attributes (None on the side
    where it does not exist), the attribute ``diffs`` and the ``reasons`` the action was chosen.
    """

    address: str
    kind: str
    name: str
    action: Action
    before: Optional[dict[str, Any]]
    after: Optional[dict[str, Any]]
    diffs: list[AttributeDiff] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The change as JSON-ready data (``plan --json``): the dataclass fields, ``action`` as its string value."""
        body = asdict(self)
        body["action"] = self.action.value
        return body

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> "ResourceChange":
        """The change ``to_dict`` wrote. Raises KeyError, TypeError or ValueError (an unknown action) when ``body`` is
        malformed.
        """
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
    """One plan: the resource changes in apply order, plus the placement and replica counts they lead to.

    Plain data: ``render`` shows it and ``apply`` carries it out. ``state_lineage``/``state_serial`` name the state it
    was made against (None/0 without a state); ``placement``/``placement_before`` are ``Placement.summary()`` dicts
    (replicas, nodes, CPUs and GPUs used); replica counts are those an apply waits for (``initial_replicas``).
    """

    changes: list[ResourceChange]  # in apply order; no-ops included for display
    placement: "PlacementSummary"
    state_lineage: Optional[str]
    state_serial: int
    provider: "ProviderRecord"
    cluster_source: str  # "live" or "projected" (embedded cluster not started yet)
    replicas_before: int
    replicas_after: int
    placement_before: "PlacementSummary" = field(default_factory=dict)  # type: ignore[assignment]
    destroy: bool = False
    targets: list[str] = field(default_factory=list)  # --target: only these (and what they need) are planned
    replicas_max_after: Optional[int] = None  # above replicas_after when backends autoscale
    # The code that ships (servectl.loading.bundle.Listing.summary): file count, what .servectlignore and the saved-plan
    # rule leave out. Empty for a destroy, a rollback or a saved plan (their code is already frozen).
    bundle: dict[str, Any] = field(default_factory=dict)

    @property
    def actionable(self) -> list[ResourceChange]:
        """The changes that do something (every action but NOOP), in apply order."""
        return [c for c in self.changes if c.action is not Action.NOOP]

    def has_changes(self) -> bool:
        """True when at least one change is not a NOOP, as Terraform's ``Plan.CanApply``."""
        return bool(self.actionable)

    def count(self, action: Action) -> int:
        """The number of changes whose action is ``action``."""
        return sum(1 for c in self.changes if c.action is action)

    def tally(self) -> str:
        """The summary line ``"N added, N changed, N replaced, N destroyed"``, after Terraform's
        ``Resources: N added, N changed, N destroyed``.
        """
        return (
            f"{self.count(Action.CREATE)} added, {self.count(Action.UPDATE)} changed, "
            f"{self.count(Action.REPLACE)} replaced, {self.count(Action.DELETE)} destroyed"
        )

    @property
    def replica_delta(self) -> int:
        """Replicas after minus replicas before (negative when the plan shrinks the deployment)."""
        return self.replicas_after - self.replicas_before

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> "Plan":
        """The plan ``to_dict`` wrote; optional keys default and ``format_version``/``summary`` are ignored.
        Raises KeyError, TypeError or ValueError when ``body`` is malformed.
        """
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
        """The plan as ``plan --json`` prints it (``format_version`` PLAN_JSON_VERSION): every field, plus a ``summary``
        with the count per action (add, change, replace, destroy) and the ``replica_delta``.
        """
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
