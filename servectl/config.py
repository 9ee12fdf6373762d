"""The config vocabulary users write in ``main.py``: Backend, Endpoint, LocalRay, S3State, var.

Constructing a resource registers it with the config being loaded (as Pulumi
resources do), so the module reads as a plain list of declarations. Passing a
``Backend`` object into an ``Endpoint`` records the dependency; a misspelt
variable name then fails at load time with a line number.
"""
from __future__ import annotations

import contextvars
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from servectl.sensitive import REDACTED, Sensitive, remember
from servectl.errors import ConfigError
from servectl.state.store import HISTORY_KEEP
from servectl import names

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
MAX_THREADS = 1_024
MAX_NODE_CPUS = 100_000.0  # the embedded head's
MAX_NODE_GPUS = 1_024
HTTP_LOCATIONS = ("HeadOnly", "EveryNode", "NoServer")


@dataclass
class Registry:
    """What one load of a config directory declared, in declaration order."""

    config_dir: str
    variables_given: dict[str, str]
    backends: list["Backend"] = field(default_factory=list)
    endpoints: list["Endpoint"] = field(default_factory=list)
    providers: list["LocalRay"] = field(default_factory=list)
    state_backends: list["S3State"] = field(default_factory=list)
    variables: dict[str, "Variable"] = field(default_factory=dict)
    rollouts: list[Any] = field(default_factory=list)  # servectl.rollout_config.Rollout
    histories: list["History"] = field(default_factory=list)


_active: contextvars.ContextVar[Optional[Registry]] = contextvars.ContextVar("servectl_registry", default=None)


def active_registry() -> Optional[Registry]:
    """The Registry of the config load running in this context; None outside a load (a worker importing main.py)."""
    return _active.get()


def set_registry(registry: Optional[Registry]) -> contextvars.Token:
    """Make ``registry`` the active one in this context (the loader, around running ``main.py``).

    Returns the token ``reset_registry`` takes.
    """
    return _active.set(registry)


def reset_registry(token: contextvars.Token) -> None:
    """Make active again the registry that was active before the ``set_registry`` call that returned ``token``."""
    _active.reset(token)


def declaration_site() -> str:
    """``file:line`` of the config statement that is running, for error messages.

    The innermost frame inside the config directory is the user's line; when
    no load is active (a worker importing ``main`` for a callable) any caller will do.
    """
    registry = active_registry()
    frame = sys._getframe(1)
    fallback = None
    while frame is not None:
        filename = frame.f_code.co_filename
        if registry is not None and os.path.abspath(filename).startswith(registry.config_dir + os.sep):
            return f"{os.path.relpath(filename, registry.config_dir)}:{frame.f_lineno}"
        if fallback is None and not filename.startswith(os.path.dirname(__file__)) and "pydantic" not in filename:
            fallback = f"{os.path.basename(filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return fallback or "<config>"


def first_error(err: ValidationError) -> str:
    """A pydantic ValidationError as the one line a config mistake gets: ``where: what (got value)``.

    Only the first error is told (fix one, run again, as a compiler does); an
    unknown setting says to check the spelling. Sensitive values print as
    ``sensitive(…)`` (their repr).
    """
    first = err.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown setting (check the spelling)"
    if not first["loc"]:  # a check across settings: the input is the whole block, too long to echo
        return message
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {message} (got {first.get('input')!r})"


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
    code: Any = Field(description='import path "module:attr" resolved in the config dir, or a class/function')
    init_args: tuple[Any, ...] = ()
    init_kwargs: dict[str, Any] = Field(default_factory=dict)
    num_replicas: int = Field(1, ge=0, le=MAX_REPLICAS, description="replica count; changing it is an in-place update")
    autoscaling: Optional[Autoscaling] = Field(
        None, description="replicas between min_replicas and max_replicas, following load (instead of num_replicas)"
    )
    ray_actor_options: RayActorOptions = Field(default_factory=RayActorOptions)
    max_concurrent_queries: int = Field(100, ge=1, le=MAX_CONCURRENT_QUERIES, description="in-flight requests per replica")
    user_config: Any = Field(None, description="passed to reconfigure(config) on every replica")
    max_batch_size: Optional[int] = Field(
        None, ge=1, le=MAX_CONCURRENT_QUERIES,
        description="batch up to this many requests: __call__ gets a list and returns a list",
    )
    batch_wait_timeout_s: float = Field(
        0.01, ge=0, le=MAX_BATCH_WAIT_S, description="how long a partial batch waits for more requests"
    )
    omp_num_threads: Optional[int] = Field(
        None, ge=1, le=MAX_THREADS, description="OMP/MKL/OpenBLAS threads per replica, set before user code imports numpy/torch"
    )
    env_vars: dict[str, Union[str, Sensitive]] = Field(
        default_factory=dict, description="environment variables of the replica processes (values may be sensitive(...))"
    )
    pip: list[str] = Field(
        default_factory=list, description="pip requirements installed for this backend only (Ray runtime_env pip)"
    )
    conda: Optional[str] = Field(None, description="name of an existing conda env on the nodes (Ray runtime_env conda)")
    code_version: Optional[str] = Field(
        None, description="version of code only the workers can import; changing it restarts the replicas"
    )
    declared_at: str = ""

    def __init__(self, name: str, code: BackendCode, *init_args: Any, **settings: Any) -> None:
        site = declaration_site()
        try:
            super().__init__(name=name, code=code, init_args=tuple(init_args), declared_at=site, **settings)
        except ValidationError as err:
            raise ConfigError(f"{site}: backend {name!r}: {first_error(err)}") from None
        if not isinstance(name, str) or not names.matches(names.NAME, name):
            raise ConfigError(
                f"{site}: backend name {name!r} is invalid: use letters, digits, '-' or '_', starting with a letter"
            )
        if not (isinstance(code, str) or callable(code)):
            raise ConfigError(f"{site}: backend {name!r}: code must be an import path 'module:attr' or a class/function")
        if isinstance(code, str) and not names.matches(names.IMPORT_PATH, code):
            raise ConfigError(f"{site}: backend {name!r}: import path {code!r} must look like 'module:attr'")
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
        for requirement in self.pip:
            if not isinstance(requirement, str) or not requirement.strip() or requirement.strip().startswith("-"):
                raise ConfigError(
                    f"{site}: backend {name!r}: pip requirement {requirement!r} must be a requirement like 'pkg==1.2'"
                )
        registry = active_registry()
        if registry is not None:
            registry.backends.append(self)


class Endpoint(_Resource):
    """An HTTP route served by one backend or a weighted set of backends."""

    name: str
    route: Optional[str] = Field(None, description="HTTP path prefix, e.g. /hello; None for handle-only endpoints")
    traffic: dict[Any, float] = Field(description="backend (object or name) -> weight; weights sum to 1")
    shadow: dict[Any, float] = Field(default_factory=dict, description="backend -> proportion of requests copied to it")
    declared_at: str = ""

    def __init__(
        self,
        name: str,
        route: Optional[str] = None,
        backend: Union[Backend, str, None] = None,
        traffic: Optional[dict[Union[Backend, str], float]] = None,
        shadow: Optional[dict[Union[Backend, str], float]] = None,
    ) -> None:
        site = declaration_site()
        if not isinstance(name, str) or not names.matches(names.NAME, name):
            raise ConfigError(
                f"{site}: endpoint name {name!r} is invalid: use letters, digits, '-' or '_', starting with a letter"
            )
        if (backend is None) == (traffic is None):
            raise ConfigError(f"{site}: endpoint {name!r}: give exactly one of backend=… or traffic={{backend: weight}}")
        if traffic is None:
            traffic = {backend: 1.0}
        if not isinstance(traffic, dict) or not traffic:
            raise ConfigError(f"{site}: endpoint {name!r}: traffic must be a non-empty dict of backend -> weight")
        if route is not None and not names.matches(names.ROUTE, route):
            raise ConfigError(
                f"{site}: endpoint {name!r}: route {route!r} must be a path starting with '/' (letters, digits, '.', "
                "'_', '~', '-', '/'), and not under /_servectl or /-/ (servectl's and Serve's own)"
            )
        if route is not None and len(route) > 1 and route.endswith("/"):
            raise ConfigError(f"{site}: endpoint {name!r}: route {route!r} must not end with '/'")
        for key, weight in traffic.items():
            if not isinstance(key, (Backend, str)):
                raise ConfigError(f"{site}: endpoint {name!r}: traffic key {key!r} is not a Backend or backend name")
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or math.isnan(weight) or weight < 0:
                label = key.name if isinstance(key, Backend) else key
                raise ConfigError(f"{site}: endpoint {name!r}: weight for {label!r} must be a non-negative number, got {weight!r}")
        total = sum(float(w) for w in traffic.values())
        if abs(total - 1.0) > WEIGHT_TOLERANCE:
            raise ConfigError(f"{site}: endpoint {name!r}: traffic weights sum to {total:g}; they must sum to 1")
        shadow = {} if shadow is None else shadow
        if not isinstance(shadow, dict):
            raise ConfigError(f"{site}: endpoint {name!r}: shadow must be a dict of backend -> proportion (0..1)")
        for key, proportion in shadow.items():
            label = key.name if isinstance(key, Backend) else key
            if not isinstance(key, (Backend, str)):
                raise ConfigError(f"{site}: endpoint {name!r}: shadow key {key!r} is not a Backend or backend name")
            if (
                not isinstance(proportion, (int, float)) or isinstance(proportion, bool)
                or math.isnan(proportion) or not 0 <= proportion <= 1
            ):
                raise ConfigError(f"{site}: endpoint {name!r}: shadow proportion for {label!r} must be between 0 and 1, got {proportion!r}")
        super().__init__(name=name, route=route, traffic=dict(traffic), shadow=dict(shadow), declared_at=site)
        registry = active_registry()
        if registry is not None:
            registry.endpoints.append(self)


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


class LocalRay(Block):
    """The local Ray provider: an embedded cluster servectl starts itself, or an existing one.

    ``address`` (or env ``SERVECTL_RAY_ADDRESS``) names an existing cluster that
    servectl uses but never stops; without it servectl owns a head node on
    its own ports and temp dir.
    """

    address: Optional[str] = Field(None, description="GCS address host:port of an existing cluster")
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=1, le=65535)
    http_location: Literal["HeadOnly", "EveryNode", "NoServer"] = "HeadOnly"
    num_cpus: Optional[float] = Field(
        None, ge=0, le=MAX_NODE_CPUS, allow_inf_nan=False, description="CPUs of the embedded head (default: this machine's)"
    )
    num_gpus: int = Field(0, ge=0, le=MAX_NODE_GPUS, description="GPUs of the embedded head (logical GPUs work on CPU machines)")
    resources: dict[str, float] = Field(default_factory=dict)
    auth_token_path: Optional[str] = Field(None, description="token file for an existing cluster with token auth")

    @model_validator(mode="after")
    def _address_shape(self) -> "LocalRay":
        if self.address is not None and not re.fullmatch(r"[\w.-]+:\d{1,5}", self.address):
            raise ValueError(f"address {self.address!r} must be host:port")
        return self


BUCKET_PATTERN = names.BUCKET


class S3State(Block):
    """Keep the state in S3 instead of ``servectl.state.json``, as Terraform's S3 backend with ``use_lockfile``.

    The bucket must exist and have versioning on (every state write is then a
    kept version). The lock is the object ``KEY.lock``, created only if absent.
    """

    bucket: str = Field(..., description="an existing bucket with versioning enabled")
    key: str = Field(..., min_length=1, max_length=1000, description="object key of the state, e.g. serving/prod.json")
    region: str = Field(..., min_length=1)
    encrypt: bool = Field(False, description="server-side encryption (SSE-S3, or SSE-KMS with kms_key_id)")
    kms_key_id: Optional[str] = None
    endpoint_url: Optional[str] = Field(None, description="an S3-compatible endpoint; AWS_ENDPOINT_URL also works")

    registry_field: ClassVar[str] = "state_backends"

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if not names.matches(names.BUCKET, value) or ".." in value:
            raise ValueError("not a valid S3 bucket name (3-63 lowercase letters, digits, dots, hyphens)")
        return value

    @field_validator("key")
    @classmethod
    def _plain_key(cls, value: str) -> str:
        if value.startswith("/") or value.endswith("/"):
            raise ValueError("the key names an object: no leading or trailing '/'")
        return value

    @model_validator(mode="after")
    def _kms_needs_encrypt(self) -> "S3State":
        if self.kms_key_id is not None and not self.encrypt:
            raise ValueError("kms_key_id is set but encrypt is False: set encrypt=True")
        return self


class History(Block):
    """How many applied versions the state's history keeps (``servectl state history``, ``servectl rollback``).

    Every apply, destroy, rollback and refresh adds one entry with the
    config's files; past ``keep`` the oldest go, except the state's own version
    and the two newest applied ones (what ``rollback`` returns to).
    """

    keep: int = Field(HISTORY_KEEP, ge=2, le=10_000, description="entries kept; the oldest beyond it are pruned on each apply")

    registry_field: ClassVar[str] = "histories"


@dataclass
class Variable:
    """One input variable a config declared with ``var()``: its default, description and ``file:line``.

    ``value`` is what the load resolved (``--var``, then ``SERVECTL_VAR_name``, then the default), wrapped in
    Sensitive when the variable is declared ``sensitive=True``.
    """

    name: str
    default: Any
    description: str
    declared_at: str
    value: Any = None


_MISSING = object()
ENV_VARIABLE_PREFIX = "SERVECTL_VAR_"


def var(
    name: str, default: Any = _MISSING, description: str = "", type: Optional[type] = None, sensitive: bool = False
) -> Any:
    """Declare an input variable and return its value (``--var name=value``, env ``SERVECTL_VAR_name``, or the default).

    The value given on the command line is converted to ``type`` (or the
    default's type), so ``var("replicas", default=2)`` with ``--var replicas=4`` is ``4``.
    ``sensitive=True`` returns it as ``sensitive(value)``: never printed, kept only in the 0600 state.
    """
    site = declaration_site()
    registry = active_registry()
    target_type = type or (default.__class__ if default not in (_MISSING, None) else str)
    if registry is None:  # imported outside a load (a worker importing main.py): defaults only
        value = None if default is _MISSING else default
        return Sensitive(value) if sensitive else value
    if name in registry.variables:
        raise ConfigError(f"{site}: variable {name!r} is declared twice (first at {registry.variables[name].declared_at})")
    variable = Variable(name=name, default=None if default is _MISSING else default, description=description, declared_at=site)
    from_env = ENV_VARIABLE_PREFIX + name
    if name in registry.variables_given:
        variable.value = _convert(name, registry.variables_given[name], target_type, site, secret=sensitive)
    elif from_env in os.environ:  # as Terraform's TF_VAR_name: CI sets it once for every command
        variable.value = _convert(name, os.environ[from_env], target_type, site, source=from_env, secret=sensitive)
    elif default is _MISSING:
        raise ConfigError(f"{site}: variable {name!r} has no default: pass --var {name}=VALUE (or set {from_env})")
    else:
        variable.value = default
    if sensitive:
        variable.value = Sensitive(variable.value)
    registry.variables[name] = variable
    return variable.value


def _convert(name: str, raw: str, target: type, site: str, source: str = "", secret: bool = False) -> Any:
    """``raw`` (from --var or the environment) as ``target``; a sensitive variable's value is never echoed."""
    if secret:
        remember(raw)
    try:
        if target is bool:
            lowered = raw.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return lowered in ("true", "1", "yes")
        if target in (int, float, str):
            return target(raw)
        import json

        value = json.loads(raw)
        if target in (dict, list) and not isinstance(value, target):  # JSON of the default's own shape
            raise TypeError(raw)
        return value
    except (ValueError, TypeError):
        shown = REDACTED if secret else repr(raw)
        given = f"{source}={shown}" if source else f"--var {name}={shown}"
        shape = {"dict": "JSON object", "list": "JSON array"}.get(target.__name__, target.__name__)
        raise ConfigError(f"{given}: not a valid {shape} (declared at {site})") from None
