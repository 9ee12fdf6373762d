"""Diff the desired state against the recorded state into an ordered Plan.

Each change is classified by what its attributes cost on Ray Serve, as the
config fields declare it (``servectl.config.costs``): replica count,
concurrency, user_config and routes change on running replicas (update in
place); code, init arguments and resources restart replicas (replace, done as
Serve's rolling update so the route stays served). A provider's own resource
kinds (AWS) come with their rules in its plugin (``servectl.model.kinds``).
"""
from __future__ import annotations

from typing import Any, Optional

from servectl.model.desired import (
    BACKEND, DEFAULT_INGRESS, ENDPOINT, DesiredState, ResourceSpec, backends_used, initial_replicas, replica_range,
)
from servectl.model.kinds import (
    ProviderPlugin, attribute_costs, in_place_attributes, plugin_for_provider, plugin_for_resource,
)
from servectl.config.costs import UpdateType
from servectl.config.resources import DEFAULT_DEREGISTRATION_DELAY_S
from servectl.errors import PlanError
from servectl.model.capacity import NodeCapacity
from servectl.planning.placement import ReplicaDemand, describe_cluster, pack
from servectl.model.plan import Action, AttributeDiff, Plan, ResourceChange
from servectl.sensitive import REDACTED, is_marked, redact
from servectl.state.document import APPLYING, FAILED, ResourceState, StateDocument


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists, scalars and sensitive values are leaves."""
    if isinstance(value, dict) and value and not is_marked(value):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


# Attributes recorded only when they differ from their default (so states written before them plan no change):
# absent, they are compared as their default.
RECORDED_WHEN_SET: dict[str, dict[str, Any]] = {ENDPOINT: {"deregistration_delay_s": DEFAULT_DEREGISTRATION_DELAY_S}}


def attribute_diffs(kind: str, before: dict[str, Any], after: dict[str, Any]) -> list[AttributeDiff]:
    """The differences between a resource's recorded and desired attributes, one per dotted path (``a.b``).

    A diff forces replacement unless its top-level attribute is in the kind's in-place set (what Terraform calls
    ForceNew, here per attribute). ``user_config`` is one diff, compared whole; turning batching on or off always
    replaces; an attribute absent before and empty now is no change (a newer servectl added it).
    """
    in_place = in_place_attributes(kind)
    defaults = RECORDED_WHEN_SET.get(kind, {})
    diffs = []
    for top in sorted(set(before) | set(after)):
        old, new = before.get(top, defaults.get(top)), after.get(top, defaults.get(top))
        if old == new:
            continue
        if top not in before and new in ({}, [], None):
            continue  # an attribute a newer servectl added, at its empty default: nothing changed
        if top in ("user_config", "models"):  # shown whole: one value the user wrote as one (model ids hold dots)
            diffs.append(AttributeDiff(top, old, new, forces_replacement=top not in in_place))
            continue
        if top == "max_batch_size" and (old is None) != (new is None):
            # Batching on/off changes what __call__ receives (a request or a list): new replicas.
            diffs.append(AttributeDiff(top, old, new, forces_replacement=True))
            continue
        flat_old, flat_new = flatten(old, top), flatten(new, top)
        for path in sorted(set(flat_old) | set(flat_new)):
            if flat_old.get(path) != flat_new.get(path):
                diffs.append(AttributeDiff(path, flat_old.get(path), flat_new.get(path), top not in in_place))
    return diffs


def _short(value: Any) -> str:
    """A value as a plan reason shows it: sha256s shortened, sensitive values as ``(sensitive)``."""
    value = redact(value)
    if value == REDACTED:
        return REDACTED
    if isinstance(value, str) and len(value) == 64:
        return value[:12]  # sha256
    return repr(value) if isinstance(value, str) else str(value)


def _model_moves(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """One line per model id whose routing changes: ``model adapter-7: traffic → canary 0.1, base 0.9``."""
    def shown(routed: Optional[dict[str, float]]) -> str:
        return ", ".join(f"{name} {weight:g}" for name, weight in routed.items()) if routed else "traffic"

    return [
        f"model {model_id}: {shown(before.get(model_id))} → {shown(after.get(model_id))}"
        for model_id in sorted(set(before) | set(after))
        if before.get(model_id) != after.get(model_id)
    ]


def reasons_for(diffs: list[AttributeDiff], kind: str = BACKEND) -> list[str]:
    """The plan's reason lines for ``diffs`` of a resource of ``kind``.

    Traffic weight moves come first, as one ``traffic: a 1 → 0.5, b 0 → 0.5`` line; then one line per other diff,
    sha256s shortened and sensitive values redacted, saying what the attribute's declared cost means
    (``servectl.config.costs``): ``(replicas restart)`` on a diff that forces replacement, ``changed
    (reconfigure() runs on every replica)`` on one Serve applies through ``reconfigure``.
    """
    costs = attribute_costs(kind)
    reasons = []
    weights = [d for d in diffs if d.path.startswith("traffic.")]
    if weights:
        moves = ", ".join(
            f"{d.path.split('.', 1)[1]} {d.before if d.before is not None else 0:g} → {d.after if d.after is not None else 0:g}"
            for d in weights
        )
        reasons.append(f"traffic: {moves}")
    for diff in diffs:
        if diff.path.startswith("traffic."):
            continue
        if diff.path == "models":
            reasons += _model_moves(diff.before or {}, diff.after or {})
            continue
        cost = costs.get(diff.path.split(".", 1)[0])
        if diff.path == "code.sha256":
            reasons.append(f"code changed (sha256 {_short(diff.before)} → {_short(diff.after)})")
        elif cost is UpdateType.RECONFIGURE and not diff.forces_replacement:
            reasons.append(f"{diff.path} changed ({cost.describe.removeprefix('in place: ')})")
        else:
            suffix = " (replicas restart)" if diff.forces_replacement else ""
            reasons.append(f"{diff.path} {_short(diff.before)} → {_short(diff.after)}{suffix}")
    return reasons


def _change_for(spec: ResourceSpec, recorded: Optional[ResourceState]) -> ResourceChange:
    base = dict(address=spec.address, kind=spec.kind, name=spec.name, after=spec.attributes)
    if recorded is None:
        return ResourceChange(action=Action.CREATE, before=None, reasons=["not in state"], **base)
    diffs = attribute_diffs(spec.kind, recorded.attributes, spec.attributes)
    if recorded.status in (FAILED, APPLYING):
        why = (f"last apply failed: {recorded.error}" if recorded.status == FAILED
               else "the last apply stopped before this change finished")
        # Retry what was interrupted: an in-place change stays in place (the replicas may already run it), and a
        # resource that runs with nothing to change is sent again as it is.
        in_place = recorded.live and not any(d.forces_replacement for d in diffs) and spec.kind in (BACKEND, ENDPOINT)
        return ResourceChange(
            action=Action.UPDATE if in_place else Action.REPLACE,
            before=recorded.attributes,
            diffs=diffs,
            reasons=[why] + reasons_for(diffs, spec.kind),
            **base,
        )
    if not diffs:
        return ResourceChange(action=Action.NOOP, before=recorded.attributes, **base)
    action = Action.REPLACE if any(d.forces_replacement for d in diffs) else Action.UPDATE
    reasons = reasons_for(diffs, spec.kind)
    plugin = plugin_for_resource(spec.kind)
    if plugin is not None:
        reasons = plugin.reasons(spec.kind, recorded.attributes, spec.attributes, reasons)
    return ResourceChange(action=action, before=recorded.attributes, diffs=diffs, reasons=reasons, **base)


def _order(changes: list[ResourceChange], recorded: dict[str, ResourceState]) -> list[ResourceChange]:
    """Zero-downtime order: backends up first, then routes move, then what is removed goes.

    A deleted endpoint whose route a new or changed endpoint takes goes before
    it, since Serve refuses two applications on one route.
    """
    wanted_routes = {
        c.after.get("route") for c in changes if c.kind == ENDPOINT and c.action is not Action.DELETE and c.after
    }
    replaced = {c.name for c in changes if c.kind == BACKEND and c.action is Action.REPLACE}
    starting = replaced | {c.name for c in changes if c.kind == BACKEND and c.action is Action.CREATE}

    def moves_off_first(change: ResourceChange) -> bool:
        """Traffic leaving a backend this plan replaces, for backends that stay as they are, leaves first: no
        request reaches the new code on its way out (a rollout that starts over does this)."""
        if change.kind != ENDPOINT or change.action is not Action.UPDATE:
            return False
        before = {name for name, weight in (change.before or {}).get("traffic", {}).items() if weight > 0}
        after = {name for name, weight in (change.after or {}).get("traffic", {}).items() if weight > 0}
        return bool(before & replaced) and not after & starting

    def rank(change: ResourceChange) -> tuple[int, int]:
        plugin = plugin_for_resource(change.kind)
        if plugin is not None:  # nodes exist before replicas land on them, and go after they leave
            order = plugin.resource_kinds.index(change.kind)
            shrinking = change.action is Action.UPDATE and plugin.shrinks(change.kind, change.before, change.after)
            return (-1, order) if change.action is not Action.DELETE and not shrinking else (5, -order)
        if moves_off_first(change):
            return 0, -1
        if change.kind == BACKEND and change.action is not Action.DELETE:
            return 0, 0
        if change.kind == ENDPOINT and change.action is Action.DELETE:
            route = (change.before or {}).get("route")
            return (1 if route is not None and route in wanted_routes else 3), 0
        if change.kind == ENDPOINT:
            return 2, 0
        return 4, 0  # backend deletes: after every route has moved off them
    return sorted(changes, key=rank)  # stable: declaration order within a rank


def plan_changes(
    desired: DesiredState,
    state: Optional[StateDocument],
    nodes: list[NodeCapacity],
    cluster_source: str = "live",
    destroy: bool = False,
    targets: Optional[list[str]] = None,
) -> Plan:
    """Build the plan that takes ``state`` to ``desired`` (or to nothing, with ``destroy``).

    With ``targets`` only those resources change, with what they cannot change
    without (Terraform's -target): the rest keep their recorded values.
    """
    recorded = dict(state.resources) if state else {}
    wanted = {} if destroy else desired.resources
    _check_provider_unchanged(desired, state)

    changes = [_change_for(spec, recorded.get(address)) for address, spec in wanted.items()]
    for address, resource in recorded.items():
        if address not in wanted:
            changes.append(
                ResourceChange(
                    address=address,
                    kind=resource.kind,
                    name=resource.name,
                    action=Action.DELETE,
                    before=resource.attributes,
                    after=None,
                    reasons=["destroy requested" if destroy else "no longer in config"],
                )
            )

    result: list[Any] = list(wanted.values())
    if targets:
        selected = _targeted(targets, wanted, recorded)
        changes = [c for c in changes if c.address in selected]
        result = [wanted[a] if a in selected else recorded[a] for a in sorted(set(wanted) | set(recorded))
                  if (a in wanted if a in selected else a in recorded)]
    sizing = _node_sizing(desired, recorded)
    if sizing is not None and sizing.summary is not None:
        # Nodes that do not exist yet: the provider sized them (AWS: node groups packed onto the node types).
        return _plan(changes, recorded, desired, state, cluster_source, destroy, targets, result,
                     sizing.summary(result), sizing.summary(recorded.values()))
    placement = pack(_demands(result), nodes)
    placement_before = pack(_demands(recorded.values()), nodes)
    _refuse_unplaced(placement, wanted, nodes, cluster_source)

    return _plan(changes, recorded, desired, state, cluster_source, destroy, targets, result,
                 placement.summary(), placement_before.summary())


def _plan(
    changes: list[ResourceChange], recorded: dict[str, ResourceState], desired: DesiredState,
    state: Optional[StateDocument], cluster_source: str, destroy: bool, targets: Optional[list[str]],
    result: list[Any], placement: dict[str, Any], placement_before: dict[str, Any],
) -> Plan:
    replicas_before = sum(initial_replicas(r.attributes) for r in recorded.values() if r.kind == BACKEND)
    replicas_after = sum(initial_replicas(s.attributes) for s in result if s.kind == BACKEND)
    replicas_max_after = sum(replica_range(s.attributes)[1] for s in result if s.kind == BACKEND)
    return Plan(
        changes=_order(changes, recorded),
        placement=placement,
        state_lineage=state.lineage if state else None,
        state_serial=state.serial if state else 0,
        provider=desired.provider.attributes(),
        cluster_source=cluster_source,
        replicas_before=replicas_before,
        targets=sorted(targets or []),
        replicas_after=replicas_after,
        replicas_max_after=replicas_max_after,
        placement_before=placement_before,
        destroy=destroy,
    )


def _refuse_unplaced(placement: Any, wanted: dict[str, Any], nodes: list[NodeCapacity], cluster_source: str) -> None:
    if not placement.unplaced:
        return
    demand, missing = placement.unplaced[0]
    spec = wanted[f"{BACKEND}.{demand.backend}"]
    wanted_count = initial_replicas(spec.attributes)
    raise PlanError(
        f"{spec.declared_at}: backend.{demand.backend}: {missing} of {wanted_count} "
        f"replica{'s' if wanted_count != 1 else ''} needing {{{demand.describe()}}} each cannot be placed on the cluster ({describe_cluster(nodes)}"
        f"{', shape projected from LocalRay settings' if cluster_source == 'projected' else ''}); "
        f"lower {'autoscaling min_replicas' if spec.attributes.get('autoscaling') else 'num_replicas'} or "
        "ray_actor_options, or give the cluster more resources"
    )


def check_placement(desired: DesiredState, nodes: list[NodeCapacity]) -> None:
    """Place ``desired``'s backends on the live ``nodes`` again (a plan made before the cluster existed could only
    use its projected shape, which knows nothing of memory); raises PlanError naming what does not fit."""
    wanted = {address: spec for address, spec in desired.resources.items() if spec.kind == BACKEND}
    _refuse_unplaced(pack(_demands(wanted.values()), nodes), wanted, nodes, "live")


def _node_sizing(desired: DesiredState, recorded: dict[str, ResourceState]) -> Optional[ProviderPlugin]:
    """The plugin that sizes the nodes itself: the config's provider's, or (its block gone) the one whose
    resources the state still records."""
    plugin = plugin_for_provider(desired.provider.kind)
    if plugin is not None:
        return plugin
    return next((p for p in map(plugin_for_resource, (r.kind for r in recorded.values())) if p is not None), None)


def _demands(resources: Any) -> list[tuple[ReplicaDemand, int]]:
    return [
        (ReplicaDemand.from_actor_options(r.name, r.attributes["ray_actor_options"]), initial_replicas(r.attributes))
        for r in resources
        if r.kind == BACKEND and initial_replicas(r.attributes) > 0
    ]


def _targeted(targets: list[str], wanted: dict[str, Any], recorded: dict[str, ResourceState]) -> set[str]:
    """The targeted addresses plus what they cannot change without."""
    known = set(wanted) | set(recorded)
    for target in targets:
        if target not in known:
            listed = ", ".join(sorted(known)) or "none"
            raise PlanError(f"--target {target}: no such resource in the config or the state (known: {listed})")
    selected = set(targets)
    for target in list(selected):  # an endpoint needs the backends it routes and shadows to
        if target in wanted:
            selected |= set(wanted[target].depends_on)
    for target in list(selected):  # a backend's removal needs the endpoints that still use it to move first
        if target.startswith(f"{BACKEND}.") and target not in wanted:
            name = target.split(".", 1)[1]
            for address, resource in recorded.items():
                if resource.kind == ENDPOINT and name in backends_used(resource.attributes):
                    selected.add(address)
                    if address in wanted:
                        selected |= set(wanted[address].depends_on)
    return selected


def _check_provider_unchanged(desired: DesiredState, state: Optional[StateDocument]) -> None:
    if not state or not state.resources or not state.provider:
        return
    before = state.provider
    after = desired.provider.attributes()
    defaults = {"ingress": DEFAULT_INGRESS}  # recorded only when set
    changed = [
        key for key in ("kind", "region", "cluster_name", "address", "http_host", "http_port", "http_location", "ingress")
        if before.get(key, defaults.get(key)) != after.get(key, defaults.get(key))
    ]
    if changed:
        key = changed[0]
        raise PlanError(
            f"provider {key} changed ({before.get(key, defaults.get(key))!r} → {after.get(key, defaults.get(key))!r}) "
            "while resources are deployed; "
            "Serve cannot move its HTTP server or cluster in place: run `servectl destroy` (it uses the settings "
            "things were applied with), then apply"
        )
