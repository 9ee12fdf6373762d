"""Carry out a plan through a provider, recording state after every completed change.

The plan's order is the zero-downtime order (backends healthy → routes move →
removals). The state is written atomically after each change, so an apply that
is interrupted leaves a state that is true to what was done, and running it
again converges. A change that fails is reverted on the live system where
possible, recorded as failed with its error, and stops the apply.
"""
from __future__ import annotations

import time
from typing import Optional

from servectl.version import __version__
from servectl.model.desired import DesiredState
from servectl.errors import ApplyError, ServectlError
from servectl.engine.events import Emit, Event, EventKind, provider_steps
from servectl.model.plan import Action, Plan, ResourceChange
from servectl.planning.planner import check_placement
from servectl.providers.base import Provider
from servectl.state.document import APPLIED, APPLYING, FAILED, ResourceState, StateDocument
from servectl.state.store import StateStore



def _after_change(resources: dict[str, ResourceState], change: ResourceChange) -> dict[str, ResourceState]:
    working = dict(resources)
    if change.action is Action.DELETE:
        working.pop(change.address, None)
    else:
        previous = resources.get(change.address)
        working[change.address] = ResourceState(
            kind=change.kind,
            name=change.name,
            attributes=change.after or {},
            live=dict(previous.live) if previous else {},
        )
    return working


def _deployable(resources: dict[str, ResourceState]) -> dict[str, ResourceState]:
    """Resources that should be live: a failed or unfinished create never came up and is left out."""
    return {a: r for a, r in resources.items() if not (r.status in (FAILED, APPLYING) and not r.live)}


def apply_plan(
    plan: Plan,
    desired: Optional[DesiredState],
    state: Optional[StateDocument],
    store: StateStore,
    provider: Provider,
    emit: Emit,
    timeout_s: float = 300.0,
) -> StateDocument:
    """Carry out ``plan``'s changes in order through ``provider``, writing the state to ``store`` around each one.

    Returns the final state document; ``desired`` (when given) becomes its config snapshot. ``timeout_s`` (seconds)
    bounds each change; ``emit`` gets an Event per step (a change started, finished, failed; a provider's own steps). Raises ApplyError when Serve runs applications the state
    does not manage, or when a change fails (reverted where possible and recorded as failed first); PlanError when a
    plan made before the cluster existed does not fit the cluster this apply started. A rerun after a stop converges.
    """
    document = state.copy() if state else StateDocument.new()
    provider.recall(dict((document.provider or {}).get("live") or {}))
    progress = provider_steps(emit)
    provider_live = provider.prepare(progress)
    document.provider = {**plan.provider, "live": provider_live}
    if plan.cluster_source == "projected" and desired is not None and not plan.destroy:
        view = provider.cluster()  # the cluster this apply started: its real nodes, memory included
        if view.source == "live":
            check_placement(desired, view.nodes)
    recorded_apps = {r.name for r in document.resources.values() if r.kind == "backend"}
    strangers = provider.unmanaged_conflicts(recorded_apps)
    if strangers:
        raise ApplyError(
            f"Serve at {provider_live.get('address')} runs applications this state does not manage "
            f"({', '.join(strangers)}); servectl manages the whole Serve instance: use a cluster of its own "
            "or remove them first"
        )

    changes = plan.actionable
    for index, change in enumerate(changes, start=1):
        emit(Event(EventKind.CHANGE_STARTED, change.address, change.action.value, index, len(changes)))
        started = time.monotonic()
        _mark_applying(document, change)
        store.write(document)
        working = _after_change(document.resources, change)
        try:
            live = provider.converge(_deployable(working), change, timeout_s, progress)
        except ServectlError as err:
            _record_failure(document, change, err, provider, emit)
            store.write(document)
            done = index - 1
            raise ApplyError(
                f"{err} — {done} of {len(changes)} change{'s' if len(changes) != 1 else ''} applied and recorded; "
                "fix the cause and run `servectl plan` to see what is left"
            ) from None
        for address, resource in working.items():
            if address in live:
                resource.live = live[address]
            if address == change.address:
                resource.status, resource.error = APPLIED, None
        document.resources = working
        document.stamp(__version__)
        store.write(document)
        emit(Event(EventKind.CHANGE_FINISHED, change.address, change.action.value, index, len(changes),
                   seconds=time.monotonic() - started))

    if desired is not None:
        document.config_snapshot = {
            "variables": desired.variables,
            "resources": {a: r.attributes for a, r in desired.resources.items()} if not plan.destroy else {},
        }
    document.stamp(__version__)
    store.write(document)
    return document


def _mark_applying(document: StateDocument, change: ResourceChange) -> None:
    """Record that ``change`` is under way, so a crash mid-change leaves a state that says so.

    The next plan then retries the change, and the resource counts as managed
    (an application a crashed create left in Serve is not a stranger).
    """
    resource = document.resources.get(change.address)
    if resource is None:
        document.resources[change.address] = ResourceState(
            kind=change.kind, name=change.name, attributes=change.after or {}, live={}, status=APPLYING
        )
    else:
        resource.status = APPLYING
    document.stamp(__version__)


def _record_failure(
    document: StateDocument, change: ResourceChange, err: ServectlError, provider: Provider, emit: Emit
) -> None:
    """Put the live system back as it was before ``change`` and record the change as failed."""
    emit(Event(EventKind.CHANGE_FAILED, change.address, change.action.value, message=str(err)))
    reverted = False
    try:
        provider.converge(_deployable(document.resources), ResourceChange(
            address=change.address, kind=change.kind, name=change.name, action=Action.NOOP,
            before=change.after, after=change.before,
        ), 120.0, provider_steps(emit))
        reverted = True
    except ServectlError as revert_err:
        emit(Event(EventKind.REVERT_UNFINISHED, change.address, change.action.value, message=str(revert_err)))
    previous = document.resources.get(change.address)
    if previous is None:  # a failed create: recorded so the next plan retries it
        document.resources[change.address] = ResourceState(
            kind=change.kind, name=change.name, attributes=change.after or {}, live={}, status=FAILED, error=str(err)
        )
    elif reverted and previous.live:
        # It runs exactly what the state records again: nothing to retry, so the next plan (and drift) shows only
        # how the config differs from that, never a replace with an empty diff.
        previous.status, previous.error = APPLIED, None
    else:
        previous.status, previous.error = FAILED, str(err)
    document.stamp(__version__)
