"""The one small interface every provider offers to plan and apply."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from servectl.model.capacity import NodeCapacity
from servectl.model.plan import ResourceChange
from servectl.state.document import ResourceState

Progress = Callable[[str], None]


@dataclass
class ClusterView:
    """The nodes replicas can go on. ``source`` is "live" or "projected" (not started yet)."""

    nodes: list[NodeCapacity]
    source: str


@dataclass
class LiveBackend:
    """What the cluster runs for one backend right now."""

    status: str  # the provider's health word: HEALTHY, UPDATING, UNHEALTHY, DEPLOY_FAILED, …
    running: int  # replicas running
    replicas: int  # replicas in any state
    message: str = ""
    # The live values of the backend's attributes the provider can read back,
    # named as in the state (num_replicas, user_config, …): drift compares them.
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class LiveView:
    """A read-only look at the live system: its backends and where its metrics are."""

    backends: dict[str, LiveBackend]
    metrics_urls: list[str]
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)  # the live routing policy per endpoint
    nodes: int = 0
    # Provider resources read back (the AWS provider's node groups, target group), by address:
    # the values drift compares, or None where the resource is gone.
    infra: dict[str, Optional[dict[str, Any]]] = field(default_factory=dict)


class Provider(ABC):
    """What plan and apply ask of a provider, as Terraform's core asks a provider plugin.

    Plan reads ``cluster``, ``sealing_problem`` and ``environment_problems``; apply calls ``recall``, ``prepare``,
    ``unmanaged_conflicts``, then ``converge`` once per change; status and drift call ``observe``; a saved plan
    compares ``fingerprint``; destroy ends with ``teardown``.
    """

    def recall(self, recorded: dict[str, Any]) -> None:
        """The identifiers the last apply recorded for the provider (what prepare() returned then).

        Called before prepare(); a provider that must keep something across
        applies (the AWS cluster's Ray token) reads it here.
        """

    def sealing_problem(self) -> Optional[str]:
        """Why this provider could not seal sensitive values for its cluster (None: it can). Asked at plan time."""
        return None

    @abstractmethod
    def sealing_key(self) -> bytes:
        """The key sensitive values are sealed under for this cluster (``servectl.runtime.sealed``).

        Raises ProviderError when the cluster has no Ray auth token to derive it from.
        """

    @abstractmethod
    def cluster(self) -> ClusterView:
        """The cluster's nodes for placement. Must not start or change anything."""

    @abstractmethod
    def prepare(self, progress: Progress) -> dict[str, Any]:
        """Make the cluster reachable (start an embedded one if servectl owns it).

        Returns the provider's identifiers to record in state.
        """

    @abstractmethod
    def unmanaged_conflicts(self, managed: set[str]) -> list[str]:
        """Live serving objects the state does not record (after prepare())."""

    @abstractmethod
    def converge(
        self,
        resources: dict[str, ResourceState],
        change: ResourceChange,
        timeout_s: float,
        progress: Progress,
    ) -> dict[str, dict[str, Any]]:
        """Make the live system match ``resources`` (the state after ``change``) and wait until healthy.

        Returns the live identifiers per address for the resources it touched.
        Raises ProviderError when the change fails or times out.
        """

    @abstractmethod
    def environment_problems(self, backends: dict[str, dict[str, Any]]) -> dict[str, str]:
        """Why a backend (name -> attributes) could not start on the workers: missing conda, unimportable code.

        Asked at plan time for backends whose replicas will start; must not change anything.
        """

    @abstractmethod
    def observe(self) -> LiveView:
        """Read the live system without changing it.

        Raises ProviderError when the cluster cannot be reached: an unreachable
        cluster is an error, never "nothing is deployed".
        """

    @abstractmethod
    def fingerprint(self) -> Optional[str]:
        """A digest of the live serving objects and cluster shape; None when there is no cluster yet.

        Equal digests mean nothing a plan depends on changed in between (a saved plan checks it).
        """

    @abstractmethod
    def teardown(self, progress: Progress) -> None:
        """Stop what servectl itself started (an embedded cluster); leave others' clusters alone."""
