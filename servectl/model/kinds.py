"""Resource kinds and what changing each attribute costs; the registry providers add their own kinds to.

The core knows two kinds, ``backend`` and ``endpoint``, whose costs come from
the config fields (``servectl.config.costs``). A provider that creates
infrastructure (AWS: networks, node groups, a load balancer) registers a
``ProviderPlugin`` — the kinds it adds, in creation order, their in-place
attributes and the few rules the planner asks it about — as a Terraform
provider brings its resource types and schema. Nothing in the core names them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional

from servectl.config.costs import UpdateType, update_types
from servectl.config.resources import Backend, Endpoint
from servectl.errors import ConfigError

if TYPE_CHECKING:
    from servectl.model.capacity import PlacementSummary
    from servectl.model.desired import ProviderSpec, ResourceSpec, StateBackendSpec

BACKEND = "backend"
ENDPOINT = "endpoint"


def _same_reasons(kind: str, before: dict[str, Any], after: dict[str, Any], reasons: list[str]) -> list[str]:
    return reasons


def _never_shrinks(kind: str, before: Optional[dict[str, Any]], after: Optional[dict[str, Any]]) -> bool:
    return False


@dataclass(frozen=True)
class ProviderPlugin:
    """What a provider adds to the core (Terraform: a provider's schema), registered once with ``register``.

    ``kind`` is the ``ProviderKind`` value; ``block`` the config block class users declare; ``spec(block)`` how
    to reach its cluster. ``resource_kinds`` are the kinds it plans, in creation order (they go before replicas
    land and after they leave); ``in_place`` each kind's attributes that change without a replace. ``infra(block,
    backends, config_dir)`` returns its resources by address; ``check(block, state_backend)`` raises ConfigError on
    a combination it refuses; ``reasons(kind, before, after, reasons)`` rewrites an update's reason lines (AWS: a
    node group's size in nodes and money);
    ``shrinks(kind, before, after)`` says an update removes capacity (so it goes after replicas leave);
    ``summary(resources)`` is the placement summary when the provider sizes the nodes itself.
    """

    kind: str
    block: type
    spec: Callable[[Any], "ProviderSpec"]
    resource_kinds: tuple[str, ...] = ()
    in_place: Mapping[str, frozenset[str]] = field(default_factory=dict)
    infra: Optional[Callable[[Any, list["ResourceSpec"], str], dict[str, "ResourceSpec"]]] = None
    check: Optional[Callable[[Any, Optional["StateBackendSpec"]], None]] = None
    reasons: Callable[[str, dict[str, Any], dict[str, Any], list[str]], list[str]] = _same_reasons
    shrinks: Callable[[str, Optional[dict[str, Any]], Optional[dict[str, Any]]], bool] = _never_shrinks
    summary: Optional[Callable[[Iterable[Any]], "PlacementSummary"]] = None


_PLUGINS: dict[str, ProviderPlugin] = {}


def register(plugin: ProviderPlugin) -> None:
    """Add a provider's plugin (again: replaced, so a module reloaded in tests registers cleanly)."""
    _PLUGINS[plugin.kind] = plugin


def plugins() -> list[ProviderPlugin]:
    """Every registered plugin, in registration order."""
    return list(_PLUGINS.values())


def plugin_for_provider(kind: str) -> Optional[ProviderPlugin]:
    """The plugin of provider ``kind`` (a ``ProviderKind`` value); None for ``local_ray``, which the core knows."""
    return _PLUGINS.get(str(kind))


def plugin_for_block(block: Any) -> Optional[ProviderPlugin]:
    """The plugin whose config block ``block`` is an instance of; None for ``LocalRay`` (or no block)."""
    return next((p for p in _PLUGINS.values() if isinstance(block, p.block)), None)


def plugin_for_resource(kind: str) -> Optional[ProviderPlugin]:
    """The plugin that plans resources of ``kind``; None for backends and endpoints."""
    return next((p for p in _PLUGINS.values() if kind in p.resource_kinds), None)


def resource_kinds() -> tuple[str, ...]:
    """Every kind a resource address may name: backend, endpoint and the registered providers' kinds."""
    return (BACKEND, ENDPOINT, *(k for p in _PLUGINS.values() for k in p.resource_kinds))


def attribute_costs(kind: str) -> dict[str, UpdateType]:
    """Attribute → cost for a backend or an endpoint, from the config fields (empty for other kinds)."""
    if kind == BACKEND:
        return update_types(Backend)
    if kind == ENDPOINT:
        return update_types(Endpoint, Endpoint.derived_costs)
    return {}


def in_place_attributes(kind: str) -> frozenset[str]:
    """The attributes of ``kind`` that change without restarting replicas (or, for a provider's kinds, without
    replacing the resource); every other attribute forces a replace (Terraform's ForceNew)."""
    if kind in (BACKEND, ENDPOINT):
        return frozenset(attribute for attribute, cost in attribute_costs(kind).items() if cost.in_place)
    plugin = plugin_for_resource(kind)
    return plugin.in_place.get(kind, frozenset()) if plugin else frozenset()


def split_address(address: str) -> tuple[str, str]:
    """(kind, name) of a resource address such as ``backend.NAME``.
    Raises ConfigError when the kind is not a known resource kind or the name is empty.
    """
    kind, _, name = address.partition(".")
    if kind not in resource_kinds() or not name:
        raise ConfigError(f"{address!r} is not a resource address: use backend.NAME or endpoint.NAME")
    return kind, name
