"""The resources users declare in ``main.py``: ``Backend`` and ``Endpoint``, and the ``Block`` base of the rest.

Constructing one registers it with the config being loaded (as Pulumi
resources do), so the module reads as a plain list of declarations. Passing a
``Backend`` object into an ``Endpoint`` records the dependency. Every number
is bounded here, once, with the bound in the error line.
"""
from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from servectl import names
from servectl.config.costs import UpdateType, costs
from servectl.config.registry import (
    active_registry, broke_rule_on, declaration_site, echo_value, first_error, rule_error,
)
from servectl.errors import ConfigError
from servectl.sensitive import Sensitive

NAME_PATTERN = names.NAME  # kept for callers; the rule lives in servectl.names
WEIGHT_TOLERANCE = 1e-6
# Every number a user gives is bounded: a typo of 10**12 replicas is one clear line, never a plan that runs forever.
MAX_REPLICAS = 10_000  # per backend (Ray Serve's largest documented deployments are in the thousands)
MAX_CONCURRENT_QUERIES = 100_000
MAX_CPUS = 1_024  # per replica
MAX_GPUS = 64  # per replica
MAX_MEMORY_BYTES = 2**50  # per replica: 1 PiB
MAX_RESOURCE_AMOUNT = 1_000_000.0
MAX_DELAY_S = 86_400.0  # autoscaling periods and delays: a day
MAX_BATCH_WAIT_S = 60.0
MAX_REQUEST_TIMEOUT_S = 86_400.0  # a day
MAX_QUEUED_REQUESTS = 1_000_000
MAX_LIFECYCLE_S = 3_600.0  # health checks and graceful shutdown: an hour
MAX_THREADS = 1_024
MAX_MODELS_PER_REPLICA = 10_000
MAX_MODEL_ROUTES = 1_000  # model ids an endpoint routes apart from its traffic
# An ALB target group's deregistration_delay: its default (300 s) and range (0..3600 s; 0 is below what lets
# HTTP requests in flight finish, so 1 here).
DEFAULT_DEREGISTRATION_DELAY_S = 300.0
MAX_DEREGISTRATION_DELAY_S = 3_600.0
MAX_NODE_CPUS = 100_000.0  # the embedded head's
MAX_NODE_GPUS = 1_024
HTTP_LOCATIONS = ("HeadOnly", "EveryNode", "NoServer")


class _Resource(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, validate_assignment=False, allow_inf_nan=False)

    def __hash__(self) -> int:  # resources are keys in traffic dicts: identity is the object
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other


class RayActorOptions(BaseModel):
    """Per-replica resources, as Ray's ``ray_actor_options``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    num_cpus: float = Field(1.0, ge=0, le=MAX_CPUS, description="CPUs per replica (fractions allowed)")
    num_gpus: float = Field(0.0, ge=0, le=MAX_GPUS, description="GPUs per replica; below 1 shares a GPU")
    memory: Optional[int] = Field(None, ge=0, le=MAX_MEMORY_BYTES, description="bytes of memory reserved per replica")
    resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources")

    @field_validator("num_gpus")
    @classmethod
    def _whole_or_fraction(cls, value: float) -> float:
        if value > 1 and not float(value).is_integer():
            raise ValueError("num_gpus above 1 must be a whole number (Ray cannot split across GPUs)")
        return value

    @field_validator("resources")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        for key, amount in value.items():
            if not 0 <= amount <= MAX_RESOURCE_AMOUNT:
                raise ValueError(f"resource {key!r} must be between 0 and {MAX_RESOURCE_AMOUNT:g}")
            if key in ("CPU", "GPU", "memory"):
                raise ValueError(f"use num_cpus/num_gpus/memory instead of resources[{key!r}]")
        return value


class Autoscaling(BaseModel):
    """Ray Serve's replica autoscaling: replicas follow the requests in flight per replica."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    min_replicas: int = Field(1, ge=0, le=MAX_REPLICAS)
    max_replicas: int = Field(..., ge=1, le=MAX_REPLICAS)
    target_ongoing_requests: float = Field(
        2.0, gt=0, le=MAX_CONCURRENT_QUERIES, description="requests in flight per replica to aim for"
    )
    initial_replicas: Optional[int] = Field(None, ge=0, le=MAX_REPLICAS)
    metrics_interval_s: float = Field(10.0, gt=0, le=MAX_DELAY_S)
    look_back_period_s: float = Field(30.0, gt=0, le=MAX_DELAY_S)
    upscale_delay_s: float = Field(30.0, ge=0, le=MAX_DELAY_S)
    downscale_delay_s: float = Field(600.0, ge=0, le=MAX_DELAY_S)

    @model_validator(mode="after")
    def _ordered(self) -> "Autoscaling":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"autoscaling max_replicas {self.max_replicas} is below min_replicas {self.min_replicas}")
        if self.initial_replicas is not None and not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError("autoscaling initial_replicas must lie between min_replicas and max_replicas")
        return self


BackendCode = Union[str, Callable[..., Any], type]


class Backend(_Resource):
    """Model code served by replicas: ``Backend(name, "module:Class", *init_args, **settings)``."""

    name: str = Field(description="unique backend name; also the Ray Serve application name")
    code: Any = Field(json_schema_extra=costs(UpdateType.RESTART), description='import path "module:attr" resolved in the config dir, or a class/function')
    init_args: tuple[Any, ...] = Field((), json_schema_extra=costs(UpdateType.RESTART))
    init_kwargs: dict[str, Any] = Field(default_factory=dict, json_schema_extra=costs(UpdateType.RESTART))
    num_replicas: int = Field(
        1, ge=0, le=MAX_REPLICAS, json_schema_extra=costs(UpdateType.LIGHTWEIGHT), description="replica count"
    )
    autoscaling: Optional[Autoscaling] = Field(
        None, json_schema_extra=costs(UpdateType.LIGHTWEIGHT),
        description="replicas between min_replicas and max_replicas, following load (instead of num_replicas)",
    )
    ray_actor_options: RayActorOptions = Field(default_factory=RayActorOptions, json_schema_extra=costs(UpdateType.RESTART))
    max_concurrent_queries: int = Field(
        100, ge=1, le=MAX_CONCURRENT_QUERIES, json_schema_extra=costs(UpdateType.LIGHTWEIGHT),
        description="in-flight requests per replica",
    )
    user_config: Any = Field(
        None, json_schema_extra=costs(UpdateType.RECONFIGURE), description="passed to reconfigure(config) on every replica"
    )
    max_batch_size: Optional[int] = Field(
        None, ge=1, le=MAX_CONCURRENT_QUERIES, json_schema_extra=costs(UpdateType.LIGHTWEIGHT),
        description="batch up to this many requests: __call__ gets a list and returns a list",
    )
    batch_wait_timeout_s: float = Field(
        0.01, ge=0, le=MAX_BATCH_WAIT_S, json_schema_extra=costs(UpdateType.LIGHTWEIGHT),
        description="how long a partial batch waits for more requests",
    )
    omp_num_threads: Optional[int] = Field(
        None, ge=1, le=MAX_THREADS, json_schema_extra=costs(UpdateType.RESTART, "env_vars"),
        description="OMP/MKL/OpenBLAS threads per replica, set before user code imports numpy/torch"
    )
    env_vars: dict[str, Union[str, Sensitive]] = Field(
        default_factory=dict, json_schema_extra=costs(UpdateType.RESTART),
        description="environment variables of the replica processes (values may be sensitive(...))"
    )
    pip: list[str] = Field(
        default_factory=list, json_schema_extra=costs(UpdateType.RESTART),
        description="pip requirements installed for this backend only (Ray runtime_env pip)"
    )
    conda: Optional[str] = Field(
        None, json_schema_extra=costs(UpdateType.RESTART),
        description="name of an existing conda env on the nodes (Ray runtime_env conda)",
    )
    request_timeout_s: Optional[float] = Field(
        None, gt=0, le=MAX_REQUEST_TIMEOUT_S, json_schema_extra=costs(UpdateType.LIGHTWEIGHT),
        description="an HTTP request still unanswered after this many seconds gets 504 from the front proxy "
        "(the replica keeps serving); None: the front proxy's 120 s",
    )
    max_queued_requests: Optional[int] = Field(
        None, ge=1, le=MAX_QUEUED_REQUESTS, json_schema_extra=costs(UpdateType.LIGHTWEIGHT),
        description="requests waiting for a replica beyond this are refused at once with 503 and Retry-After "
        "(Ray Serve's max_queued_requests); None: no limit",
    )
    graceful_shutdown_timeout_s: Optional[float] = Field(
        None, ge=0, le=MAX_LIFECYCLE_S, json_schema_extra=costs(UpdateType.LIGHTWEIGHT),
        description="how long a stopping replica may finish its requests (Ray Serve's; None: Serve's 20 s)",
    )
    health_check_period_s: Optional[float] = Field(
        None, gt=0, le=MAX_LIFECYCLE_S, json_schema_extra=costs(UpdateType.LIGHTWEIGHT),
        description="seconds between Serve's health checks of each replica (None: Serve's 10 s)",
    )
    health_check_timeout_s: Optional[float] = Field(
        None, gt=0, le=MAX_LIFECYCLE_S, json_schema_extra=costs(UpdateType.LIGHTWEIGHT),
        description="a health check unanswered this long fails the replica (None: Serve's 30 s)",
    )
    max_models_per_replica: Optional[int] = Field(
        None, ge=1, le=MAX_MODELS_PER_REPLICA, json_schema_extra=costs(UpdateType.RECONFIGURE),
        description="models each replica keeps loaded through the class's @serve.multiplexed loader, least "
        "recently used unloaded first (Ray Serve's max_num_models_per_replica); None: not multiplexed",
    )
    code_version: Optional[str] = Field(
        None, json_schema_extra=costs(UpdateType.RESTART, "code"),
        description="version of code only the workers can import",
    )
    declared_at: str = ""

    def __init__(self, name: str, code: BackendCode, *init_args: Any, **settings: Any) -> None:
        site = declaration_site()
        try:
            super().__init__(name=name, code=code, init_args=tuple(init_args), declared_at=site, **settings)
        except ValidationError as err:
            if broke_rule_on(err, "name"):
                raise ConfigError(f"{site}: {first_error(err)}") from None
            raise ConfigError(f"{site}: backend {name!r}: {first_error(err)}") from None
        if self.autoscaling is not None and "num_replicas" in settings:
            raise ConfigError(
                f"{site}: backend {name!r}: give num_replicas or autoscaling={{...}}, not both "
                "(autoscaling's min_replicas and max_replicas bound the count)"
            )
        if self.max_batch_size is not None and self.max_batch_size > self.max_concurrent_queries:
            raise ConfigError(
                f"{site}: backend {name!r}: max_batch_size {self.max_batch_size} is above max_concurrent_queries "
                f"{self.max_concurrent_queries}: Serve sends a replica at most that many requests at once, so such a "
                "batch never fills and each one waits out batch_wait_timeout_s; lower max_batch_size or raise "
                "max_concurrent_queries"
            )
        if self.pip and self.conda:
            raise ConfigError(
                f"{site}: backend {name!r}: give pip=[...] or conda=..., not both "
                "(Ray installs pip requirements into the conda env only when they are listed inside it)"
            )
        registry = active_registry()
        if registry is not None:
            registry.backends.append(self)

    @field_validator("name", mode="before")
    @classmethod
    def _name_rule(cls, value: Any) -> Any:
        if not isinstance(value, str) or not names.matches(names.NAME, value):
            raise rule_error(
                f"backend name {value!r} is invalid: use letters, digits, '-' or '_', starting with a letter"
            )
        return value

    @field_validator("code", mode="before")
    @classmethod
    def _code_rule(cls, value: Any) -> Any:
        if not (isinstance(value, str) or callable(value)):
            raise rule_error("code must be an import path 'module:attr' or a class/function")
        if isinstance(value, str) and not names.matches(names.IMPORT_PATH, value):
            raise rule_error(f"import path {value!r} must look like 'module:attr'")
        return value

    @field_validator("pip", mode="before")
    @classmethod
    def _requirement_rule(cls, value: Any) -> Any:
        for requirement in value if isinstance(value, (list, tuple)) else []:
            if not isinstance(requirement, str) or not requirement.strip() or requirement.strip().startswith("-"):
                raise rule_error(f"pip requirement {requirement!r} must be a requirement like 'pkg==1.2'")
        return value


class Endpoint(_Resource):
    """An HTTP route served by one backend or a weighted set of backends."""

    # Attributes another block sets on the endpoint, with their cost: a Rollout's position moves weights only.
    derived_costs: ClassVar[dict[str, UpdateType]] = {"rollout": UpdateType.LIGHTWEIGHT}

    name: str
    route: Optional[str] = Field(
        None, json_schema_extra=costs(UpdateType.LIGHTWEIGHT),
        description="HTTP path prefix, e.g. /hello; None for handle-only endpoints",
    )
    traffic: dict[Any, float] = Field(
        json_schema_extra=costs(UpdateType.LIGHTWEIGHT), description="backend (object or name) -> weight; weights sum to 1"
    )
    shadow: dict[Any, float] = Field(
        default_factory=dict, json_schema_extra=costs(UpdateType.LIGHTWEIGHT),
        description="backend -> proportion of requests copied to it",
    )
    models: dict[str, dict[Any, float]] = Field(
        default_factory=dict, json_schema_extra=costs(UpdateType.LIGHTWEIGHT),
        description="multiplexed model id -> its own traffic (backend -> weight, or one backend): requests for "
        "that model id go there, every other id follows traffic",
    )
    deregistration_delay_s: float = Field(
        DEFAULT_DEREGISTRATION_DELAY_S, ge=1, le=MAX_DEREGISTRATION_DELAY_S, allow_inf_nan=False,
        json_schema_extra=costs(UpdateType.LIGHTWEIGHT),
        description="seconds an open connection (a WebSocket) keeps the backend it was routed to after a routing "
        "change moved its traffic, and that removing the backend waits for it, before it is closed (as an ALB "
        "target group's deregistration_delay)",
    )
    declared_at: str = ""

    def __init__(
        self,
        name: str,
        route: Optional[str] = None,
        backend: Union[Backend, str, None] = None,
        traffic: Optional[dict[Union[Backend, str], float]] = None,
        shadow: Optional[dict[Union[Backend, str], float]] = None,
        models: Optional[dict[str, Union[Backend, str, dict[Union[Backend, str], float]]]] = None,
        deregistration_delay_s: float = DEFAULT_DEREGISTRATION_DELAY_S,
    ) -> None:
        site = declaration_site()
        try:  # the field's own rule, first: every later message names the endpoint
            type(self)._name_rule(name)
        except PydanticCustomError as err:
            raise ConfigError(f"{site}: {err.message()}") from None
        if (backend is None) == (traffic is None):
            raise ConfigError(f"{site}: endpoint {name!r}: give exactly one of backend=… or traffic={{backend: weight}}")
        if traffic is None:
            traffic = {backend: 1.0}
        if not isinstance(traffic, dict) or not traffic:
            raise ConfigError(f"{site}: endpoint {name!r}: traffic must be a non-empty dict of backend -> weight")
        _check_weights(site, name, "traffic", traffic)
        model_traffic = _model_traffic(site, name, models)
        shadow = {} if shadow is None else shadow
        if not isinstance(shadow, dict):
            raise ConfigError(f"{site}: endpoint {name!r}: shadow must be a dict of backend -> proportion (0..1)")
        for key, proportion in shadow.items():
            label = key.name if isinstance(key, Backend) else key
            if not isinstance(key, (Backend, str)):
                raise ConfigError(f"{site}: endpoint {name!r}: shadow key {key!r} is not a Backend or backend name")
            if not _finite_number(proportion) or not 0 <= proportion <= 1:
                raise ConfigError(f"{site}: endpoint {name!r}: shadow proportion for {label!r} must be between 0 and 1, got {echo_value(proportion)}")
        try:
            super().__init__(
                name=name, route=route, traffic=dict(traffic), shadow=dict(shadow), models=model_traffic,
                deregistration_delay_s=deregistration_delay_s, declared_at=site,
            )
        except ValidationError as err:
            raise ConfigError(f"{site}: endpoint {name!r}: {first_error(err)}") from None
        registry = active_registry()
        if registry is not None:
            registry.endpoints.append(self)

    @field_validator("name", mode="before")
    @classmethod
    def _name_rule(cls, value: Any) -> Any:
        if not isinstance(value, str) or not names.matches(names.NAME, value):
            raise rule_error(f"endpoint name {value!r} is invalid: use letters, digits, '-' or '_', starting with a letter")
        return value

    @field_validator("route", mode="before")
    @classmethod
    def _route_rule(cls, value: Any) -> Any:
        if value is None:
            return value
        if not isinstance(value, str) or not names.matches(names.ROUTE, value):
            raise rule_error(
                f"route {value!r} must be a path starting with '/' (letters, digits, '.', '_', '~', '-', '/'), and "
                "not under /_servectl or /-/ (servectl's and Serve's own)"
            )
        if len(value) > 1 and value.endswith("/"):
            raise rule_error(f"route {value!r} must not end with '/'")
        return value


def _finite_number(value: Any) -> bool:
    """Whether ``value`` is an int or float (not a bool) that is a finite float (10**400 is not: it overflows)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _check_weights(site: str, name: str, what: str, traffic: dict[Any, Any]) -> None:
    """Refuse (ConfigError) a traffic dict whose keys are not backends or whose weights are not >= 0 summing to 1."""
    for key, weight in traffic.items():
        if not isinstance(key, (Backend, str)):
            raise ConfigError(f"{site}: endpoint {name!r}: {what} key {key!r} is not a Backend or backend name")
        if not _finite_number(weight) or weight < 0:
            label = key.name if isinstance(key, Backend) else key
            raise ConfigError(f"{site}: endpoint {name!r}: weight for {label!r} must be a non-negative number, got {echo_value(weight)}")
    total = sum(float(w) for w in traffic.values())
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise ConfigError(f"{site}: endpoint {name!r}: {what} weights sum to {total:g}; they must sum to 1")


def _model_traffic(site: str, name: str, models: Any) -> dict[str, dict[Any, float]]:
    """``models=`` as model id -> {backend: weight}: one backend stands for all of that id's traffic."""
    if models is None:
        return {}
    if not isinstance(models, dict):
        raise ConfigError(f"{site}: endpoint {name!r}: models must be a dict of model id -> backend or {{backend: weight}}")
    if len(models) > MAX_MODEL_ROUTES:
        raise ConfigError(f"{site}: endpoint {name!r}: {len(models)} model ids in models=; at most {MAX_MODEL_ROUTES}")
    routed: dict[str, dict[Any, float]] = {}
    for model_id, target in models.items():
        if not names.matches(names.MODEL_ID, model_id):
            raise ConfigError(
                f"{site}: endpoint {name!r}: model id {model_id!r} is invalid: up to 128 letters, digits or "
                "'.', '_', ':', '/', '@', '+', '-', starting with a letter or digit"
            )
        traffic = dict(target) if isinstance(target, dict) else {target: 1.0}
        if not traffic:
            raise ConfigError(f"{site}: endpoint {name!r}: model id {model_id!r} routes to no backend")
        _check_weights(site, name, f"model {model_id!r}'s traffic", traffic)
        routed[model_id] = traffic
    return routed


class Block(_Resource):
    """A top-level block (a provider, a state backend): one error line naming its place, then registered."""

    registry_field: ClassVar[str] = "providers"
    declared_at: str = ""

    def __init__(self, **settings: Any) -> None:
        site = declaration_site()
        try:
            super().__init__(declared_at=site, **settings)
        except ValidationError as err:
            raise ConfigError(f"{site}: {type(self).__name__}: {first_error(err)}") from None
        self._check(site)
        registry = active_registry()
        if registry is not None:
            getattr(registry, self.registry_field).append(self)

    def _check(self, site: str) -> None:
        """Checks across settings that pydantic's validators cannot phrase; raise ConfigError naming ``site``."""


class ProviderBlock(Block):
    """A provider block (``LocalRay``, or a provider's own such as ``AwsRay``): Terraform's ``provider`` block.

    One per config. The loader asks ``servectl.model.kinds`` for the plugin of the block's class: how to reach
    the cluster and what infrastructure the provider adds to the plan.
    """

    registry_field: ClassVar[str] = "providers"

