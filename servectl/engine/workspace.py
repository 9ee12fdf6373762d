"""The library entry points the CLI (and tests) call: one config directory, its state, its provider."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Optional

from servectl.engine import drift
from servectl.loading import bundle
from servectl.planning import planfile, rollout_position
from servectl.state import history
from servectl.version import __version__
from servectl.engine.apply import apply_plan
from servectl.model.desired import BACKEND, DesiredState, address_of
from servectl.errors import ConfigError, PlanError, StateError
from servectl.engine.events import Emit, provider_steps
from servectl.loading.loader import load_config
from servectl.model.plan import Action, Plan
from servectl.sensitive import holds_sensitive
from servectl.planning.planner import plan_changes
from servectl.providers import Provider, provider_for
from servectl.state.document import StateDocument
from servectl.engine.status import StatusReport
from servectl.engine.status import collect as collect_status
from servectl.state import locate
from servectl.state.local import LocalStateStore
from servectl.state.store import LockInfo, StateStore


# Where a provider's resources live: a destroy must use the recorded values.
PROVIDER_PLACE = ("address", "http_host", "http_port", "http_location", "ingress")


@dataclass
class Planned:
    """A plan with what it was made from and what carries it out: the desired state, the state, the provider.

    A saved plan (``saved``) has no state (apply reads the current one), and carries the live fingerprint and the
    code bundle it was made with.
    """

    desired: DesiredState
    state: Optional[StateDocument]
    plan: Plan
    provider: Provider
    live_fingerprint: Optional[str] = None  # set for saved plans: apply refuses if the live system moved
    saved: bool = False
    bundle: Optional[bytes] = None  # the code being applied, when not the config dir's files as they are now
    operation: str = "apply"  # what the history entry will say

    def unfinished_rollouts(self) -> list[str]:
        """The endpoints whose declared rollout is pending, progressing or paused: work the next apply (or
        ``servectl rollout``) does even when the plan has no changes."""
        return rollout_position.unfinished(self.desired)

    def has_work(self) -> bool:
        """Whether applying would do anything: a change in the plan or an unfinished rollout (what ``plan
        --detailed-exitcode`` reports as exit 2), as Terraform decides it once, on the plan."""
        if self.plan.destroy:
            return self.plan.has_changes()
        return self.plan.has_changes() or bool(self.unfinished_rollouts())


def recorded_provider(desired: DesiredState, state: StateDocument) -> DesiredState:
    """Destroy where things were applied, even if the config's HTTP settings or address moved since."""
    moved = {key: state.provider[key] for key in PROVIDER_PLACE if key in state.provider}
    return dataclasses.replace(desired, provider=dataclasses.replace(desired.provider, **moved))


def check_environments(plan: Plan, desired: DesiredState, provider: Provider) -> None:
    """Refuse a plan whose new replicas could not start: missing conda env, code the workers cannot import, sensitive
    values on a cluster they cannot be sealed for."""
    starting = {
        change.name: change.after
        for change in plan.actionable
        if change.kind == BACKEND and change.action in (Action.CREATE, Action.REPLACE) and change.after is not None
    }
    if plan.has_changes():  # every deploy re-sends every backend: each sensitive one needs sealing
        for spec in desired.resources.values():
            if spec.kind == BACKEND and holds_sensitive(spec.attributes):
                problem = provider.sealing_problem()
                if problem:
                    raise PlanError(f"{spec.declared_at}: backend.{spec.name} holds sensitive values, but {problem}")
    problems = provider.environment_problems(starting) if starting else {}
    for name in sorted(problems):
        spec = desired.resources.get(address_of(BACKEND, name))
        site = f"{spec.declared_at}: " if spec is not None and spec.declared_at else ""
        raise PlanError(f"{site}backend.{name}: {problems[name]}")


class Workspace:
    """A config directory with its state store, as ``servectl -C DIR`` sees it."""

    def __init__(
        self, config_dir: str, variables: Optional[Mapping[str, str]] = None, lock_timeout_s: float = 0.0,
        lock_waiting: Optional[Callable[[str], None]] = None,
    ) -> None:
        """``config_dir``: the directory holding ``main.py``; ``variables``: ``--var`` values by name;
        ``lock_timeout_s``: how long every operation here waits for a state lock another holds (Terraform's
        ``-lock-timeout``; 0: fail at once), ``lock_waiting`` told the holder's line when a wait begins."""
        self.config_dir = os.path.abspath(config_dir)
        self.variables = dict(variables or {})
        self.lock_timeout_s = lock_timeout_s
        self.lock_waiting = lock_waiting
        self._held: dict[int, LockInfo] = {}  # id(store) -> the lock this workspace holds on it now
        self._store: Optional[StateStore] = None
        self._backend: Optional[locate.StateBackendSpec] = None

    def load(self) -> DesiredState:
        """Load the config (``main.py`` with this workspace's variables) and bind the state store it declares.

        Returns the desired state; raises ConfigError naming file:line when the config does not load.
        """
        desired = load_config(self.config_dir, self.variables)
        self._bind_store(desired.state_backend)
        return desired

    def _bind_store(self, spec: Optional[locate.StateBackendSpec]) -> None:
        if self._store is None:
            self._store = locate.store_for(spec, self.config_dir)
            self._backend = spec

    @property
    def store(self) -> StateStore:
        """The config's state store; when the config does not load, the one the last apply here used."""
        if self._store is None:
            try:
                self.load()
            except ConfigError:
                pointer = locate.remembered(self.config_dir)
                if pointer is None and not os.path.exists(LocalStateStore.in_dir(self.config_dir).path):
                    raise
                self._bind_store(pointer)
        assert self._store is not None
        return self._store

    @contextlib.contextmanager
    def locked(self, operation: str, store: Optional[StateStore] = None) -> Iterator[LockInfo]:
        """Hold ``store``'s lock (this config's by default) for ``operation`` while the block runs, waited for as
        this workspace was told (``lock_timeout_s``; see ``StateStore.locked``). Inside a block that holds it
        already (the CLI takes it before planning, as Terraform does), the lock held is the one yielded. Raises
        LockError naming the holder."""
        store = store or self.store
        if id(store) in self._held:
            yield self._held[id(store)]
            return
        with store.locked(operation, self.lock_timeout_s, self.lock_waiting) as info:
            self._held[id(store)] = info
            try:
                yield info
            finally:
                del self._held[id(store)]

    def read_state(self) -> Optional[StateDocument]:
        """The state document, or None when nothing has been applied.

        Raises StateError when the config keeps the state in S3, which is empty, while a local state file remains
        (``servectl state migrate`` moves it).
        """
        document = self.store.read()
        if document is None and self._backend is not None:
            left = LocalStateStore.in_dir(self.config_dir)
            if os.path.exists(left.path):
                raise StateError(
                    f"the config keeps the state in {self.store.describe()}, which is empty, but {left.path} holds "
                    "one: run `servectl state migrate` to move it (and its history) there"
                )
        return document

    def migrate_state(self) -> StateDocument:
        """Move the local state and its history into the config's S3 state (Terraform's `init -migrate-state`)."""
        remote = self.store
        if self._backend is None:
            raise StateError("the config declares no S3State(...): the state is already in the local file")
        local = LocalStateStore.in_dir(self.config_dir)
        document = local.read()
        if document is None:
            raise StateError(f"there is no local state to migrate ({local.path} does not exist)")
        with self.locked("migrate", local), self.locked("migrate", remote):
            existing = remote.read()
            if existing is not None:
                raise StateError(
                    f"{remote.describe()} already holds a state (lineage {existing.lineage}, serial "
                    f"{existing.serial}); servectl will not overwrite it"
                )
            entries = local.history()
            for entry in entries:  # every kept version moves: none is pruned on the way
                remote.append_history(entry, keep=max(len(entries), 2))
            remote.write(document)  # last: a migration cut short leaves the local state in charge
            locate.remember(self._backend, self.config_dir)
            os.replace(local.path, local.path + ".migrated")
            if os.path.isdir(local.history_dir):
                os.replace(local.history_dir, local.history_dir + ".migrated")
            return document

    def plan(
        self, destroy: bool = False, targets: Optional[list[str]] = None,
        rollout_moves: Optional[dict[str, dict]] = None,
    ) -> Planned:
        """Plan the config against the state. ``rollout_moves`` ({endpoint address: status, weight, reason}) is
        how a rollout plans its next step; otherwise declared rollouts stay where the state says they are."""
        desired = self.load()
        state = self.read_state()
        if destroy and state is not None and state.resources and state.provider:
            desired = recorded_provider(desired, state)
        if not destroy:
            desired = rollout_position.resolve(desired, state, rollout_moves)
        provider = provider_for(desired.provider, self.config_dir)
        if state is not None and state.provider:
            provider.recall(dict(state.provider.get("live") or {}))  # the AWS cluster's token: to read it live
        view = provider.cluster()
        plan = plan_changes(desired, state, view.nodes, view.source, destroy=destroy, targets=targets)
        if not destroy:
            plan.bundle = self._shipped(desired)
            check_environments(plan, desired, provider)
        return Planned(desired=desired, state=state, plan=plan, provider=provider)

    def _shipped(self, desired: DesiredState) -> dict:
        """What of the config dir ships with the code; refuses a backend whose own file the ignore file leaves out."""
        try:
            listing = bundle.listing(self.config_dir)
        except bundle.BundleError as err:
            raise PlanError(f"{self.config_dir}: {err}") from None
        left_out = set(listing.ignored) | set(listing.saved_plans) | set(listing.servectl_files)
        for spec in desired.resources.values():
            origin = (spec.attributes.get("code") or {}).get("origin") if spec.kind == BACKEND else None
            if origin and origin not in ("installed", "workers"):
                relative = origin.replace(os.sep, "/")
                if relative in left_out or any(relative.startswith(d) for d in left_out if d.endswith("/")):
                    raise PlanError(
                        f"{spec.declared_at}: backend.{spec.name}: its code {relative} is left out by "
                        f"{bundle.IGNORE_FILE}, so the workers could not import it; take it out of the ignore file"
                    )
        return listing.summary()

    def _freeze(self) -> bytes:
        try:
            return bundle.freeze(self.config_dir)
        except (OSError, bundle.BundleError) as err:
            raise PlanError(f"cannot keep a copy of the config dir's files: {err}") from None

    def save_plan(self, planned: Planned, path: str) -> None:
        """Write ``planned`` to ``path`` with the config's files and a fingerprint of the live system."""
        planfile.write(path, planned.plan, planned.desired, self._freeze(), planned.provider.fingerprint())

    @contextlib.contextmanager
    def rollback(self, to_serial: Optional[int] = None) -> Iterator[Planned]:
        """Plan a return to an earlier applied version, from the history alone (no config files needed)."""
        state = self.read_state()
        applied = [summary for summary in self.store.history_index() if summary.applied]
        if to_serial is None:
            if len(applied) < 2:
                raise StateError("there is no earlier applied version to roll back to (`servectl state history` lists them)")
            chosen = applied[-2]
        else:
            matches = [summary for summary in applied if summary.serial == to_serial]
            if not matches:
                kept = ", ".join(str(summary.serial) for summary in applied) or "none"
                raise StateError(f"no applied version with serial {to_serial} in the history (applied serials: {kept})")
            chosen = matches[0]
        target = self.store.history_entry(chosen.serial)  # the one entry (and bundle) read
        if state is not None and target.lineage != state.lineage:
            raise StateError(
                f"serial {target.serial} belongs to another state (lineage {target.lineage}); it cannot be rolled back to"
            )
        desired = target.desired_state(self.config_dir)
        with tempfile.TemporaryDirectory(prefix="servectl-rollback-code-") as scratch:
            code_dir = bundle.thaw(target.bundle, os.path.join(scratch, "config"))
            provider = provider_for(desired.provider, self.config_dir, code_dir=code_dir)
            view = provider.cluster()
            plan = plan_changes(desired, state, view.nodes, view.source)
            check_environments(plan, desired, provider)
            yield Planned(
                desired=desired, state=state, plan=plan, provider=provider, bundle=target.bundle,
                operation=f"rollback to {target.serial}",
            )

    def apply_saved(self, path: str, emit: Emit, timeout_s: float = 300.0) -> tuple[Plan, StateDocument]:
        """Carry out exactly the plan saved at ``path``, with the code it was planned with."""
        saved = planfile.read(path)
        if os.path.realpath(saved.config_dir) != os.path.realpath(self.config_dir):
            raise planfile.PlanFileError(
                f"{path} was planned for {saved.config_dir}, not {self.config_dir}: apply it with -C {saved.config_dir}"
            )
        self._bind_store(saved.desired.state_backend)  # the state the plan was made against
        with tempfile.TemporaryDirectory(prefix="servectl-planned-code-") as scratch:
            code_dir = bundle.thaw(saved.bundle, os.path.join(scratch, "config"))
            provider = provider_for(saved.desired.provider, self.config_dir, code_dir=code_dir)
            planned = Planned(
                desired=saved.desired, state=None, plan=saved.plan, provider=provider,
                live_fingerprint=saved.live_fingerprint, saved=True, bundle=saved.bundle,
            )
            return saved.plan, self.apply(planned, emit, timeout_s)

    def record_applied_version(self, planned: Planned) -> Optional[int]:
        """An apply with nothing to change: make sure the state's version is in the history (returns its serial if
        it had to be recorded), under the lock.

        The first check (one read of the newest history entry) spares the usual
        case the lock when the caller does not hold it already (the CLI does, as
        Terraform's apply holds it from before the plan); the check under the
        lock is what decides.
        """
        if planned.state is None or not planned.state.resources or self._recorded_in_history(planned.state):
            return None
        with self.locked("apply"):
            current = self.read_state()
            if current is None or (current.lineage, current.serial) != (planned.state.lineage, planned.state.serial):
                return None  # someone applied meanwhile: their apply records its own version
            return current.serial if self._record_version(current, planned) else None

    def _record_version(self, document: StateDocument, planned: Planned) -> bool:
        """Record ``document``'s version in the history if it is missing (call under the lock).

        It goes missing when an apply is killed after its last change but before
        its history entry (or after a refresh-only). The plan has nothing left to
        change, so the config as it is now is exactly that version: recording it
        keeps every applied version reachable by rollback.
        """
        if not document.resources or self._recorded_in_history(document):
            return False
        self.store.append_history(history.entry_for(
            document.serial, document.lineage, "apply (no changes: recorded the applied version)",
            planned.plan.tally(), planned.desired, planned.bundle if planned.bundle is not None else self._freeze(),
        ), keep=planned.desired.history_keep)
        return True

    def _recorded_in_history(self, document: StateDocument) -> bool:
        latest = self.store.latest_history()
        return latest is not None and (latest.serial, latest.lineage) == (document.serial, document.lineage)

    def positioned(self) -> DesiredState:
        """The desired state with every declared rollout where the state records it (what a plan would resolve),
        without contacting the cluster."""
        return rollout_position.resolve(self.load(), self.read_state())

    def provider(self) -> Provider:
        """A provider for where the state says things were applied (the config's provider before any apply)."""
        return self._recorded_provider()[1]

    def _recorded_provider(self) -> tuple[Optional[StateDocument], Provider]:
        """The state and a provider for where it says things were applied."""
        desired = self.load()
        state = self.read_state()
        if state is not None and state.resources and state.provider:
            desired = recorded_provider(desired, state)
        provider = provider_for(desired.provider, self.config_dir)
        if state is not None and state.provider:
            provider.recall(dict(state.provider.get("live") or {}))  # the AWS cluster's token, above all
        return state, provider

    def detect_drift(self) -> tuple[Optional[StateDocument], list[drift.DriftItem]]:
        """Read-only: how the live system differs from the state. An unreachable cluster raises."""
        state, provider = self._recorded_provider()
        if state is None or not state.resources:
            return state, []
        return state, drift.detect(state, provider.observe())

    def drift(self) -> drift.DriftReport:
        """Drift (live vs state) and pending changes (config vs state), both read-only."""
        _, items = self.detect_drift()
        planned = self.plan()
        return drift.DriftReport(drift=items, pending=drift.pending_changes(planned.plan))

    def accept_drift(self, state: Optional[StateDocument], items: list[drift.DriftItem]) -> tuple[StateDocument, list[str]]:
        """`apply --refresh-only`: record the live values of ``items`` in the state, under the lock."""
        if state is None:
            raise StateError("nothing is applied here: the state is empty")
        with self.locked("refresh"):
            current = self.read_state()
            if current is None or (current.lineage, current.serial) != (state.lineage, state.serial):
                raise StateError("the state changed while drift was being read; run it again")
            skipped = drift.accept(current, items)
            current.stamp(__version__)
            self.store.write(current)
            return current, skipped

    def status(self, window_s: float) -> StatusReport:
        """What runs now where the state says things were applied (read-only)."""
        state, provider = self._recorded_provider()
        return collect_status(state, provider, window_s)

    def apply(self, planned: Planned, emit: Emit, timeout_s: float = 300.0) -> StateDocument:
        """Apply ``planned`` under the state lock; refuse if the state moved since it was planned."""
        with self.locked("apply" if not planned.plan.destroy else "destroy"):
            return self.apply_locked(planned, emit, timeout_s)

    def apply_locked(self, planned: Planned, emit: Emit, timeout_s: float = 300.0) -> StateDocument:
        """``apply`` for a caller that holds the state lock already (a rollout, across its steps)."""
        locate.remember(self._backend, self.config_dir)
        current = self.read_state()
        lineage = current.lineage if current else None
        serial = current.serial if current else 0
        if lineage != planned.plan.state_lineage and planned.plan.state_lineage is not None:
            raise StateError(
                f"the state was replaced since this plan was made (lineage {planned.plan.state_lineage} → "
                f"{lineage}); run plan again"
            )
        if lineage != planned.plan.state_lineage or serial != planned.plan.state_serial:
            raise StateError(
                f"the state changed since this plan was made (serial {planned.plan.state_serial} → {serial}); "
                "run plan again"
            )
        if planned.saved:
            if current is not None and current.provider:
                planned.provider.recall(dict(current.provider.get("live") or {}))
            live = planned.provider.fingerprint()
            if live != planned.live_fingerprint:
                raise StateError(
                    "the live system changed since this plan was made (Serve's applications, the cluster's "
                    "nodes or the front proxy differ from what the plan saw); run plan again"
                )
        frozen = b""
        if planned.plan.has_changes() and not planned.plan.destroy:
            frozen = planned.bundle if planned.bundle is not None else self._freeze()
        if planned.plan.has_changes() or current is None:
            document = apply_plan(
                planned.plan, planned.desired, current, self.store, planned.provider, emit, timeout_s
            )
        else:
            document = current
        if planned.plan.has_changes():
            operation = "destroy" if planned.plan.destroy else planned.operation
            self.store.append_history(history.entry_for(
                document.serial, document.lineage, operation, planned.plan.tally(),
                None if planned.plan.destroy else planned.desired, frozen,
            ), keep=planned.desired.history_keep)
        elif not planned.plan.destroy:
            self._record_version(document, planned)
        if planned.plan.destroy:  # also when nothing was left to delete: the cluster may still run
            planned.provider.teardown(provider_steps(emit))
        return document
