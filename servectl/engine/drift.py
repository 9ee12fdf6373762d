"""Drift: where the live system no longer matches the state, told apart from config not yet applied.

Drift is found by reading the live system back (the provider's LiveView) and
comparing it with what the state recorded; pending changes are an ordinary
plan of the config against the state. Both are read-only. `apply
--refresh-only` accepts drift into the state (Terraform's refresh): the live
values become the recorded ones, and the next plan shows how the config
differs from them.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from servectl.model.desired import BACKEND, ENDPOINT, address_of
from servectl.model.plan import Plan
from servectl.providers.base import LiveView
from servectl.statuses import DriftKind
from servectl.sensitive import REDACTED, holds_sensitive, redact, reveal
from servectl.state.document import APPLYING, FAILED, StateDocument

DRIFT_FORMAT_VERSION = 1
PROVIDER_ADDRESS = "provider"

CHANGED, DELETED, UNMANAGED = DriftKind.CHANGED, DriftKind.DELETED, DriftKind.UNMANAGED


@dataclass
class DriftItem:
    """One difference between the state and the live system, for the resource at ``address``.

    ``change`` is CHANGED (the value at dotted ``path`` is ``recorded`` in the state and ``live`` live; a sensitive
    one shows redacted), DELETED (recorded, gone live) or UNMANAGED (live, not recorded); the last two have no path.
    """

    address: str
    change: str
    path: Optional[str] = None
    recorded: Any = None
    live: Any = None

    def describe(self) -> str:
        """One line for people: ``ADDRESS: PATH is LIVE live, recorded RECORDED`` (as JSON), or deleted/unmanaged."""
        if self.change == DELETED:
            return f"{self.address} was deleted outside servectl"
        if self.change == UNMANAGED:
            return f"{self.address} exists live but not in the state (servectl did not create it)"
        return f"{self.address}: {self.path} is {_text(self.live)} live, recorded {_text(self.recorded)}"


@dataclass
class DriftReport:
    """What ``servectl drift`` reports: the drift (DriftItems) and the config changes not yet applied.

    ``pending`` holds the plan's changes as ``pending_changes`` summarises them (empty for ``plan --refresh-only``).
    """

    drift: list[DriftItem] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)  # the plan's changes, summarised

    @property
    def clean(self) -> bool:
        """True when there is neither drift nor a pending change."""
        return not self.drift and not self.pending

    def to_json(self) -> dict[str, Any]:
        """The report in its stable JSON schema (``--json``).

        ``{"format_version": 1, "clean": bool, "drift": [{"address", "change", "path", "recorded", "live"}],
        "pending": [as pending_changes]}``.
        """
        return {
            "format_version": DRIFT_FORMAT_VERSION,
            "clean": self.clean,
            "drift": [asdict(item) for item in self.drift],
            "pending": self.pending,
        }


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _get(attributes: dict[str, Any], path: str) -> Any:
    value: Any = attributes
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _set(attributes: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    target = attributes
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = value


def _within_range(attributes: dict[str, Any], desired: Any) -> bool:
    low, high = attributes.get("min_size"), attributes.get("max_size")
    return low is not None and high is not None and low < high and low <= desired <= high


def detect(state: Optional[StateDocument], live: LiveView) -> list[DriftItem]:
    """The DriftItems between ``state`` and the ``live`` view (read-only; Terraform's refresh, without the write).

    Backends compare each live setting with the recorded attribute at its path; provider infra (node groups, target
    group) each read-back value, except a desired_capacity within the group's min..max (the node scaler moves it);
    endpoints their route, shadow and key-space segments. Live backends and endpoints the state lacks are UNMANAGED;
    a changed live node count is CHANGED at ``provider``. A failed or unfinished create with nothing live is skipped.
    """
    items: list[DriftItem] = []
    resources = state.resources if state else {}
    for address, resource in sorted(resources.items()):
        if resource.status in (FAILED, APPLYING) and not resource.live:
            continue  # a create that never came up: nothing live to compare
        if resource.kind == BACKEND:
            seen = live.backends.get(resource.name)
            if seen is None:
                items.append(DriftItem(address, DELETED))
                continue
            for path, live_value in sorted(seen.settings.items()):
                recorded = _get(resource.attributes, path)
                if reveal(recorded) != live_value:
                    if holds_sensitive(recorded):  # say that it drifted, never what to
                        items.append(DriftItem(address, CHANGED, path, redact(recorded), REDACTED))
                    else:
                        items.append(DriftItem(address, CHANGED, path, recorded, live_value))
        elif address in live.infra:
            seen_infra = live.infra[address]
            if seen_infra is None:
                items.append(DriftItem(address, DELETED))
                continue
            for path, live_value in sorted(seen_infra.items()):
                if path == "desired_capacity" and _within_range(resource.attributes, live_value):
                    continue  # the head's node scaler moves it between min and max with demand
                if resource.attributes.get(path) != live_value:
                    items.append(DriftItem(address, CHANGED, path, resource.attributes.get(path), live_value))
        elif resource.kind == ENDPOINT:
            policy = live.endpoints.get(resource.name)
            if policy is None:
                items.append(DriftItem(address, DELETED))
                continue
            for path, recorded in (("route", resource.attributes.get("route")),
                                   ("shadow", resource.attributes.get("shadow", {}))):
                if policy.get(path) != recorded:
                    items.append(DriftItem(address, CHANGED, path, recorded, policy.get(path)))
            if resource.live.get("segments") is not None and policy.get("segments") != resource.live.get("segments"):
                items.append(DriftItem(address, CHANGED, "live.segments", resource.live.get("segments"), policy.get("segments")))
    recorded_names = {(r.kind, r.name) for r in resources.values()}
    for name in sorted(live.backends):
        if (BACKEND, name) not in recorded_names:
            items.append(DriftItem(address_of(BACKEND, name), UNMANAGED))
    for name in sorted(live.endpoints):
        if (ENDPOINT, name) not in recorded_names:
            items.append(DriftItem(address_of(ENDPOINT, name), UNMANAGED))
    recorded_nodes = ((state.provider.get("live") or {}).get("nodes") if state else None)
    if recorded_nodes is not None and live.nodes and recorded_nodes != live.nodes:
        items.append(DriftItem(PROVIDER_ADDRESS, CHANGED, "nodes", recorded_nodes, live.nodes))
    return items


def pending_changes(plan: Plan) -> list[dict[str, Any]]:
    """The plan's actionable changes as JSON-ready dicts, sensitive values redacted.

    Each is ``{"address", "action", "reasons": [str], "diffs": [{"path", "before", "after"}]}``.
    """
    return [
        {"address": c.address, "action": c.action.value, "reasons": list(c.reasons),
         "diffs": [{"path": d.path, "before": redact(d.before), "after": redact(d.after)} for d in c.diffs]}
        for c in plan.actionable
    ]


def accept(state: StateDocument, items: list[DriftItem]) -> list[str]:
    """Record the live values in ``state`` (in place); returns what could not be accepted and why."""
    skipped = []
    for item in items:
        if item.change == UNMANAGED:
            skipped.append(f"{item.address}: not adopted (servectl only records what it created)")
            continue
        if item.live == REDACTED:
            skipped.append(f"{item.address}: {item.path} holds a sensitive value: its live value is not copied "
                           "into the state; apply to set it back")
            continue
        if item.address == PROVIDER_ADDRESS:
            state.provider.setdefault("live", {})[item.path or "nodes"] = item.live
            continue
        resource = state.resources.get(item.address)
        if resource is None:
            continue
        if item.change == DELETED:
            del state.resources[item.address]
        elif item.path and item.path.startswith("live."):
            resource.live[item.path.split(".", 1)[1]] = item.live
        elif item.path:
            _set(resource.attributes, item.path, item.live)
    return skipped
