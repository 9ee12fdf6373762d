"""What changing a setting costs on Ray Serve, declared once on the config field it belongs to.

Ray Serve declares this on its own config fields (``update_type`` in
``ray/serve/_private/config.py``: LightWeight, NeedsReconfigure,
NeedsActorReconfigure, HeavyWeight) and derives ``requires_actor_restart()``
from it. servectl does the same: each field of ``Backend`` and ``Endpoint``
carries ``costs(UpdateType.…)``, and the planner's in-place sets, the plan's
reasons and the docs' cost table are all read from there (``update_types``).
"""
from __future__ import annotations

from enum import Enum
from typing import Any, Optional

from pydantic import BaseModel


class UpdateType(str, Enum):
    """The cost of a change, as Ray Serve's ``DeploymentOptionUpdateType``."""

    LIGHTWEIGHT = "lightweight"  # running replicas keep running; Serve (or the front proxy) adjusts (LightWeight)
    RECONFIGURE = "reconfigure"  # running replicas keep running; reconfigure() runs on each (NeedsReconfigure)
    RESTART = "restart"  # new replicas, by Serve's rolling update (HeavyWeight)

    def __str__(self) -> str:
        return self.value

    @property
    def in_place(self) -> bool:
        """Whether the replicas that run now keep running (Terraform: an update in place, not a replace)."""
        return self is not UpdateType.RESTART

    @property
    def describe(self) -> str:
        """The cost in words, as plans and docs say it."""
        return {
            UpdateType.LIGHTWEIGHT: "in place",
            UpdateType.RECONFIGURE: "in place: reconfigure() runs on every replica",
            UpdateType.RESTART: "replicas restart (rolling)",
        }[self]


def costs(update_type: UpdateType, attribute: Optional[str] = None) -> dict[str, Any]:
    """A field's ``json_schema_extra``: its ``update_type`` and, when the attribute the planner diffs has another
    name (``omp_num_threads`` lands in ``env_vars``), that attribute's name."""
    return {"update_type": update_type.value, **({"attribute": attribute} if attribute else {})}


def update_types(model: type[BaseModel], derived: Optional[dict[str, UpdateType]] = None) -> dict[str, UpdateType]:
    """Attribute name → the cost of changing it, read from ``model``'s fields (those without ``costs`` are not
    attributes: names, declaration sites). ``derived``: attributes another block sets (an endpoint's ``rollout``).

    Raises ValueError when two fields that feed one attribute declare different costs (one attribute, one cost).
    """
    table: dict[str, UpdateType] = dict(derived or {})
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra
        if not isinstance(extra, dict) or "update_type" not in extra:
            continue
        attribute = str(extra.get("attribute") or name)
        cost = UpdateType(extra["update_type"])
        if table.get(attribute, cost) is not cost:
            raise ValueError(f"{model.__name__}.{name}: attribute {attribute!r} is declared with two costs")
        table[attribute] = cost
    return table


def setting_costs(model: type[BaseModel]) -> list[tuple[str, UpdateType]]:
    """(setting, cost) for every costed field of ``model`` in declaration order: the docs' cost table."""
    found = []
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and "update_type" in extra:
            found.append((name, UpdateType(extra["update_type"])))
    return found
