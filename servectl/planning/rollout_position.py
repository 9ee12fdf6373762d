"""Where a rollout stands, as plain data: its position carried over from the state into the desired state.

A rollout's position (status, weight, reason) is part of its endpoint's
``rollout`` attribute, so every step is an ordinary in-place endpoint update.
The config says where a rollout starts (``status: pending``, all traffic on
the stable backend); ``resolve`` carries the recorded position over, so
planning an unchanged config mid-rollout changes nothing, and a changed
candidate (what restarts the new backend) starts over. Pure functions: the
runner that moves rollouts is ``servectl.engine.rollout``.
"""
from __future__ import annotations

from typing import Any, Optional

from servectl.model.desired import DesiredState
from servectl.state.document import StateDocument
from servectl.statuses import RolloutStatus

PENDING, PROGRESSING, PAUSED, COMPLETED, ABORTED = (
    RolloutStatus.PENDING, RolloutStatus.PROGRESSING, RolloutStatus.PAUSED, RolloutStatus.COMPLETED,
    RolloutStatus.ABORTED,
)
# What makes a recorded position belong to the declared rollout: the same pair and the same candidate.
IDENTITY = ("stable", "new", "model", "candidate")

def weights(stable: str, new: str, weight: float) -> dict[str, float]:
    """An endpoint's traffic at ``weight`` (the new backend's fraction): ``{stable: 1 - weight, new: weight}``."""
    return dict(sorted({stable: round(1.0 - weight, 6), new: round(weight, 6)}.items()))


def position(rollout: dict[str, Any]) -> float:
    """The new backend's weight at this status."""
    status = rollout["status"]
    if status == COMPLETED:
        return 1.0
    if status in (PENDING, ABORTED):
        return 0.0
    return float(rollout["weight"])


def resolve(
    desired: DesiredState, state: Optional[StateDocument], moves: Optional[dict[str, dict[str, Any]]] = None
) -> DesiredState:
    """Give every declared rollout its recorded position (or ``moves``' new one), and its endpoint the weights."""
    recorded = state.resources if state else {}
    for spec in desired.endpoints():
        rollout = spec.attributes.get("rollout")
        if not rollout:
            continue
        before = recorded.get(spec.address)
        was = (before.attributes.get("rollout") if before else None) or {}
        if all(was.get(key) == rollout[key] for key in IDENTITY):
            rollout.update({key: was[key] for key in ("status", "weight", "reason") if key in was})
        rollout.update((moves or {}).get(spec.address, {}))
        rollout["weight"] = position(rollout)
        moved = weights(rollout["stable"], rollout["new"], rollout["weight"])
        if rollout.get("model") is None:
            spec.attributes["traffic"] = moved
        else:  # a model id's rollout moves that id's own traffic only
            spec.attributes["models"][rollout["model"]] = moved
    return desired


def declared(desired: DesiredState) -> list[tuple[str, dict[str, Any]]]:
    """(endpoint name, rollout attributes) for every endpoint with a rollout, in declaration order."""
    return [(spec.name, spec.attributes["rollout"]) for spec in desired.endpoints() if spec.attributes.get("rollout")]


def describe(rollout: dict[str, Any]) -> str:
    """A rollout in one line, e.g. ``v1 → v2 in steps 1% → 10% → 100%, 60s each``."""
    steps = " → ".join(f"{step:.0%}" if step * 100 == int(step * 100) else f"{step:.1%}" for step in rollout["steps"])
    model = f" for model {rollout['model']}" if rollout.get("model") else ""
    return f"{rollout['stable']} → {rollout['new']}{model} in steps {steps}, {rollout['pause_s']:g}s each"


def unfinished(desired: DesiredState) -> list[str]:
    """The endpoints whose declared rollout is pending, progressing or paused (not completed, not aborted)."""
    return [name for name, rollout in declared(desired) if rollout["status"] in (PENDING, PROGRESSING, PAUSED)]

