"""Desired state: what a loaded config asks for, as plain data the planner diffs.

Every attribute here is JSON-serialisable, because the same dicts are written
into the state file and shown in the plan.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import inspect
import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional, TypedDict

from servectl.aws_config import AwsRay
from servectl.config import Backend, Endpoint, LocalRay, S3State
from servectl.sensitive import to_plain
from servectl.errors import ConfigError
from servectl.statuses import ProviderKind
from servectl.state.store import HISTORY_KEEP

BACKEND = "backend"
ENDPOINT = "endpoint"
# Provider resources (AWS): planned, stated and applied like backends, in this creation order.
NODE_GROUP = "node_group"
INFRA_KINDS = (
    "aws_network", "aws_security_group", "aws_iam_role", "aws_ssm_parameter", "aws_s3_bucket", "aws_s3_object",
    "aws_lb_target_group",
    "aws_launch_template", NODE_GROUP, "aws_lb", "aws_lb_listener",
)

# Attributes that Ray Serve can change on running replicas; anything else restarts them.
IN_PLACE_BACKEND_ATTRIBUTES = frozenset(
    {"num_replicas", "autoscaling", "max_concurrent_queries", "user_config", "max_batch_size", "batch_wait_timeout_s"}
)
IN_PLACE_ENDPOINT_ATTRIBUTES = frozenset({"route", "traffic", "shadow", "rollout"})

# The module name main.py runs under while loading; workers import the same file as `main`.
CONFIG_MODULE_RUN_NAME = "__servectl_config__"


def replica_range(attributes: dict[str, Any]) -> tuple[int, int]:
    """(fewest, most) replicas a backend may run: equal unless it autoscales."""
    scaling = attributes.get("autoscaling")
    if scaling:
        return int(scaling["min_replicas"]), int(scaling["max_replicas"])
    count = int(attributes.get("num_replicas") or 0)
    return count, count


def initial_replicas(attributes: dict[str, Any]) -> int:
    """How many replicas an apply waits for: num_replicas, or autoscaling's initial (else min) count."""
    scaling = attributes.get("autoscaling")
    if scaling:
        initial = scaling.get("initial_replicas")
        return int(initial if initial is not None else scaling["min_replicas"])
    return int(attributes.get("num_replicas") or 0)


def address_of(kind: str, name: str) -> str:
    """The resource address ``KIND.NAME`` (e.g. ``backend.summarizer``), as Terraform addresses resources."""
    return f"{kind}.{name}"


def split_address(address: str) -> tuple[str, str]:
    """(kind, name) of a resource address such as ``backend.NAME``.
    Raises ConfigError when the kind is not a known resource kind or the name is empty.
    """
    kind, _, name = address.partition(".")
    if kind not in (BACKEND, ENDPOINT, *INFRA_KINDS) or not name:
        raise ConfigError(f"{address!r} is not a resource address: use backend.NAME or endpoint.NAME")
    return kind, name


class ProviderRecord(TypedDict, total=False):
    """The provider as a plan and the state record it (``ProviderSpec.attributes``); the state adds ``live`` (what
    the provider's prepare() returned: the embedded head's address, the AWS cluster's token, …)."""

    kind: str
    address: Optional[str]
    http_host: str
    http_port: int
    http_location: str
    region: str  # AWS only
    cluster_name: str  # AWS only
    live: dict[str, Any]


@dataclass(frozen=True)
class ProviderSpec:
    """How to reach (or start) the cluster. ``address`` None means servectl owns an embedded head."""

    kind: ProviderKind
    address: Optional[str]
    http_host: str
    http_port: int
    http_location: str
    num_cpus: Optional[float]
    num_gpus: int
    resources: dict[str, float]
    auth_token_path: Optional[str]
    aws: Optional[dict[str, Any]] = None  # the AwsRay block, for kind "aws_ray"

    def attributes(self) -> "ProviderRecord":
        """What a plan and the state record of the provider: kind, address and the HTTP settings, plus region and
        cluster name for AWS.
        """
        extra = {"region": self.aws["region"], "cluster_name": self.aws["cluster_name"]} if self.aws else {}
        return {
            **extra,
            "kind": self.kind,
            "address": self.address,
            "http_host": self.http_host,
            "http_port": self.http_port,
            "http_location": self.http_location,
        }


@dataclass(frozen=True)
class StateBackendSpec:
    """Where the state lives when not in the local file: an S3 object (see ``S3State``)."""

    bucket: str
    key: str
    region: str
    encrypt: bool = False
    kms_key_id: Optional[str] = None
    endpoint_url: Optional[str] = None
    kind: str = "s3"

    @classmethod
    def from_block(cls, block: S3State) -> "StateBackendSpec":
        """The spec of a config's ``S3State`` block."""
        return cls(
            bucket=block.bucket, key=block.key, region=block.region, encrypt=block.encrypt,
            kms_key_id=block.kms_key_id, endpoint_url=block.endpoint_url,
        )

    def describe(self) -> str:
        """``s3://BUCKET/KEY``, the state object's name in messages."""
        return f"s3://{self.bucket}/{self.key}"


@dataclass
class ResourceSpec:
    """One declared resource: its address, plain attributes, dependencies and where it was declared."""

    kind: str
    name: str
    attributes: dict[str, Any]
    depends_on: list[str] = field(default_factory=list)
    declared_at: str = ""

    @property
    def address(self) -> str:
        """``KIND.NAME``, the resource's address."""
        return address_of(self.kind, self.name)


@dataclass
class DesiredState:
    """Everything a loaded config asks for: the provider, the resources by address, the variables, where the state
    lives (None: the local file) and how many applied versions the history keeps; ``config_dir`` is where it is
    applied from.
    """

    config_dir: str
    provider: ProviderSpec
    resources: dict[str, ResourceSpec]
    variables: dict[str, Any]
    state_backend: Optional[StateBackendSpec] = None  # None: the local servectl.state.json
    history_keep: int = HISTORY_KEEP  # History(keep=…): applied versions the state's history keeps

    def backends(self) -> list[ResourceSpec]:
        """The backend resources, in the order ``resources`` holds them."""
        return [r for r in self.resources.values() if r.kind == BACKEND]

    def endpoints(self) -> list[ResourceSpec]:
        """The endpoint resources, in the order ``resources`` holds them."""
        return [r for r in self.resources.values() if r.kind == ENDPOINT]


def aws_provider_spec(block: AwsRay) -> ProviderSpec:
    """The AWS provider: Serve runs a proxy on every node behind the load balancer's port."""
    return ProviderSpec(
        kind=ProviderKind.AWS_RAY, address=None, http_host="0.0.0.0", http_port=block.load_balancer.port,
        http_location="EveryNode", num_cpus=None, num_gpus=0, resources={}, auth_token_path=None,
        aws=block.model_dump(exclude={"declared_at"}),
    )


def provider_spec(declared: Optional[LocalRay]) -> ProviderSpec:
    """Resolve the provider block, letting the environment fill what the config leaves open.

    As Terraform providers read AWS_REGION, ``SERVECTL_RAY_ADDRESS`` and
    ``SERVECTL_HTTP_PORT`` point an unchanged config at another cluster (tests, CI).
    """
    block = declared or LocalRay()
    address = block.address or os.environ.get("SERVECTL_RAY_ADDRESS") or None
    port = block.http_port
    if "http_port" not in block.model_fields_set and os.environ.get("SERVECTL_HTTP_PORT"):
        raw = os.environ["SERVECTL_HTTP_PORT"]
        if not raw.isdigit():
            raise ConfigError(f"SERVECTL_HTTP_PORT={raw!r} is not a port number")
        port = int(raw)
    token = block.auth_token_path or os.environ.get("SERVECTL_RAY_AUTH_TOKEN_PATH") or None
    return ProviderSpec(
        kind=ProviderKind.LOCAL_RAY,
        address=address,
        http_host=block.http_host,
        http_port=port,
        http_location=block.http_location,
        num_cpus=block.num_cpus,
        num_gpus=block.num_gpus,
        resources=dict(block.resources),
        auth_token_path=token,
    )


def code_identity(backend: Backend, config_dir: str) -> dict[str, Any]:
    """Import path and content hash of a backend's code, so a code edit shows as a replace.

    The hash covers the module that defines the code and every module of the
    config dir it imports, transitively (for a callable defined in main.py: its
    own source and the local modules main.py imports). Editing a helper thus
    restarts exactly the backends that use it. Code importable only on the
    workers is identified by its path alone.
    """
    code = backend.code
    if isinstance(code, str):
        module_name, _, _ = code.partition(":")
        source_file = _local_module_file(module_name, config_dir)
        if source_file is not None:
            _check_defines(backend, source_file, config_dir, code.partition(":")[2])
            digest = _digest_files(_local_closure(source_file, config_dir), config_dir)
            return {"import_path": code, "sha256": digest, "origin": os.path.relpath(source_file, config_dir)}
        origin = _installed_origin(module_name)
        if origin is not None:
            with open(origin, "rb") as handle:
                digest = hashlib.sha256(handle.read()).hexdigest()
            return {"import_path": code, "sha256": digest, "origin": "installed"}
        # Not importable here: the workers' copy is what runs, identified by its
        # path and the version the config declares for it.
        version = backend.code_version or ""
        digest = hashlib.sha256(f"worker-only:{code}:{version}".encode()).hexdigest()
        identity = {"import_path": code, "sha256": digest, "origin": "workers"}
        if backend.code_version is not None:
            identity["version"] = backend.code_version
        return identity
    qualname = getattr(code, "__qualname__", "")
    module = getattr(code, "__module__", "")
    if module == CONFIG_MODULE_RUN_NAME:  # defined in main.py itself: workers import it as `main`
        module = "main"
    if "<locals>" in qualname or "<lambda>" in qualname or not module:
        raise ConfigError(
            f"{backend.declared_at}: backend {backend.name!r}: code must be a module-level class or function "
            "(workers import it by name)"
        )
    try:
        source = inspect.getsource(code)
    except (OSError, TypeError):
        raise ConfigError(f"{backend.declared_at}: backend {backend.name!r}: cannot read the source of {qualname}") from None
    defining_file = inspect.getsourcefile(code) or ""
    helpers = [f for f in _local_closure(defining_file, config_dir) if f != defining_file] if defining_file else []
    digest = hashlib.sha256(source.encode() + _digest_files(helpers, config_dir).encode()).hexdigest()
    return {"import_path": f"{module}:{qualname}", "sha256": digest, "origin": "config"}


def _digest_files(paths: list[str], config_dir: str) -> str:
    total = hashlib.sha256()
    for path in sorted(paths):
        total.update(os.path.relpath(path, config_dir).encode() + b"\0" + _file_digest(path).encode())
    return total.hexdigest()


@functools.lru_cache(maxsize=4096)
def _file_digest_cached(path: str, mtime_ns: int, size: int) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _file_digest(path: str) -> str:
    stat = os.stat(path)
    return _file_digest_cached(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4096)
def _imports_of(path: str, mtime_ns: int) -> tuple[tuple[str, int], ...]:
    """(module, relative level) pairs a Python file imports, read from its syntax tree."""
    with open(path, "rb") as handle:
        tree = ast.parse(handle.read(), filename=path)
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            found.append((base, node.level))
            found += [(f"{base}.{alias.name}" if base else alias.name, node.level) for alias in node.names]
    return tuple(found)


def _local_closure(path: str, config_dir: str) -> list[str]:
    """``path`` and every config-dir module it imports, transitively."""
    seen: set[str] = set()
    stack = [path]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            imports = _imports_of(current, os.stat(current).st_mtime_ns)
        except (OSError, SyntaxError, ValueError):
            continue  # a syntax error surfaces on the workers' import with its own message
        package_dir = os.path.dirname(current)
        for name, level in imports:
            if level:
                base = package_dir
                for _ in range(level - 1):
                    base = os.path.dirname(base)
                candidate = _local_module_file(name, base) if name else os.path.join(base, "__init__.py")
            else:
                candidate = _local_module_file(name, config_dir)
            if candidate and os.path.isfile(candidate) and candidate.startswith(config_dir + os.sep):
                stack.append(candidate)
    return sorted(seen)


def _check_defines(backend: Backend, source_file: str, config_dir: str, attribute: str) -> None:
    """Refuse at plan time what the workers would fail to import: a syntax error, or a name the module lacks.

    Read, not imported: the CLI must not run model code (nor need its packages).
    """
    import ast

    relative = os.path.relpath(source_file, config_dir)
    with open(source_file, "rb") as handle:
        source = handle.read()
    try:
        tree = ast.parse(source, filename=relative)
    except SyntaxError as err:
        raise ConfigError(
            f"{relative}:{err.lineno}: syntax error in the code of backend {backend.name!r}: {err.msg} "
            f"(declared at {backend.declared_at})"
        ) from None
    top = attribute.split(".")[0]
    if not top:
        return
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(alias.name == "*" for alias in node.names):
                return  # a star import may define it: the workers will tell
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif not isinstance(node, (ast.Expr, ast.Pass)):
            return  # if/try/with/for at top level may define it: leave it to the workers
    if top not in names:
        defined = ", ".join(sorted(n for n in names if not n.startswith("_"))) or "nothing"
        raise ConfigError(
            f"{backend.declared_at}: backend {backend.name!r}: {relative} defines no {top!r} "
            f"(it defines: {defined}); fix the code path {backend.code!r}"
        )


def _installed_origin(module_name: str) -> Optional[str]:
    if not _safe_find(module_name):
        return None
    spec = importlib.util.find_spec(module_name.split(".")[0])
    origin = getattr(spec, "origin", None)
    return origin if origin and os.path.isfile(origin) else None


def _safe_find(module_name: str) -> bool:
    try:
        return importlib.util.find_spec(module_name.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def _local_module_file(module_name: str, config_dir: str) -> Optional[str]:
    parts = module_name.split(".")
    base = os.path.join(config_dir, *parts)
    for candidate in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


RESERVED_KEYS = ("__servectl_sensitive__", "__servectl_sealed__")  # servectl's own marks: never a user's key


def _json_value(value: Any, where: str) -> Any:
    try:
        plain = json.loads(json.dumps(to_plain(value), allow_nan=False))
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: value {value!r} must be JSON-serialisable (str, number, bool, list, dict)") from None
    _refuse_reserved_keys(value, where)
    return plain


def _refuse_reserved_keys(value: Any, where: str) -> None:
    """A user's own dict with servectl's mark as its only key would read as a sensitive or sealed value."""
    from servectl.sensitive import Sensitive

    if isinstance(value, Sensitive):
        value = value.value
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in RESERVED_KEYS:
                raise ConfigError(f"{where}: the key {key!r} is servectl's own; rename it")
            _refuse_reserved_keys(inner, where)
    elif isinstance(value, (list, tuple)):
        for inner in value:
            _refuse_reserved_keys(inner, where)


def backend_attributes(backend: Backend, config_dir: str) -> dict[str, Any]:
    """A backend's plain attributes, as the planner diffs and the state records them; they mirror a Ray Serve
    1.x backend's options: code identity, init args, ``num_replicas`` or ``autoscaling``, ``ray_actor_options``,
    ``max_concurrent_queries``, ``user_config``, batching, env vars, pip and conda.
    Raises ConfigError when init args or kwargs or ``user_config`` are not JSON-serialisable or use servectl's
    reserved keys, or when the code cannot be identified (see ``code_identity``).
    """
    where = f"{backend.declared_at}: backend {backend.name!r}"
    options = backend.ray_actor_options
    return {
        "code": code_identity(backend, config_dir),
        "init_args": _json_value(list(backend.init_args), where),
        "init_kwargs": _json_value(backend.init_kwargs, where),
        # One or the other, as Serve takes them: a fixed count, or the autoscaler's range.
        **(
            {"num_replicas": backend.num_replicas} if backend.autoscaling is None
            else {"autoscaling": backend.autoscaling.model_dump()}
        ),
        "ray_actor_options": {
            "num_cpus": float(options.num_cpus),
            "num_gpus": float(options.num_gpus),
            "memory": options.memory,
            "resources": dict(sorted(options.resources.items())),
        },
        "max_concurrent_queries": backend.max_concurrent_queries,
        "user_config": _json_value(backend.user_config, where),
        "max_batch_size": backend.max_batch_size,
        "batch_wait_timeout_s": float(backend.batch_wait_timeout_s) if backend.max_batch_size else None,
        "env_vars": replica_env(backend),
        "pip": [requirement.strip() for requirement in backend.pip],
        "conda": backend.conda,
    }


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def replica_env(backend: Backend) -> dict[str, Any]:
    """The replica processes' environment: ``omp_num_threads`` fans out to every BLAS library's variable.

    Without it Ray's own default holds (OMP_NUM_THREADS = the replica's whole CPUs, at least 1).
    Explicit ``env_vars`` win over the fan-out.
    """
    env: dict[str, str] = {}
    if backend.omp_num_threads is not None:
        env.update({name: str(backend.omp_num_threads) for name in THREAD_VARIABLES})
    env.update(to_plain(backend.env_vars))
    return dict(sorted(env.items()))


def _backend_named(endpoint: Endpoint, key: Any, backend_names: set[str], relation: str) -> str:
    name = key.name if isinstance(key, Backend) else key
    if name not in backend_names:
        known = ", ".join(sorted(backend_names)) or "none"
        raise ConfigError(
            f"{endpoint.declared_at}: endpoint {endpoint.name!r} {relation} unknown backend {name!r} "
            f"(declared backends: {known})"
        )
    return name


def endpoint_attributes(endpoint: Endpoint, backend_names: set[str]) -> dict[str, Any]:
    """An endpoint's plain attributes: ``route``, ``traffic`` (backend name → weight; keys naming the same backend
    are summed) and ``shadow`` (backend name → proportion; 0 leaves it out), both sorted by name, as Ray Serve
    1.x's ``set_traffic`` and ``shadow_traffic`` take them. Raises ConfigError when a key names a backend not in
    ``backend_names``.
    """
    traffic: dict[str, float] = {}
    for key, weight in endpoint.traffic.items():
        name = _backend_named(endpoint, key, backend_names, "sends traffic to")
        traffic[name] = traffic.get(name, 0.0) + float(weight)
    shadow: dict[str, float] = {}
    for key, proportion in endpoint.shadow.items():
        name = _backend_named(endpoint, key, backend_names, "shadows to")
        if proportion > 0:  # a proportion of 0 means: stop shadowing
            shadow[name] = float(proportion)
    return {"route": endpoint.route, "traffic": dict(sorted(traffic.items())), "shadow": dict(sorted(shadow.items()))}


def candidate_digest(attributes: dict[str, Any]) -> str:
    """What a rollout's new backend is, for telling one candidate from the next: everything that restarts it."""
    restarting = {key: value for key, value in attributes.items() if key not in IN_PLACE_BACKEND_ATTRIBUTES}
    return hashlib.sha256(json.dumps(restarting, sort_keys=True, default=str).encode()).hexdigest()


def declare_rollouts(rollouts: list[Any], resources: dict[str, ResourceSpec]) -> None:
    """Each ``Rollout`` becomes its endpoint's ``rollout`` attribute, starting pending: all traffic on stable.

    ``servectl.rollout.resolve`` then puts in the position the state records.
    """
    claimed: dict[str, str] = {}
    endpoints = sorted(spec.name for spec in resources.values() if spec.kind == ENDPOINT)
    backends = sorted(spec.name for spec in resources.values() if spec.kind == BACKEND)
    for rollout in rollouts:
        site, name, new = rollout.declared_at, rollout.endpoint_name, rollout.new_name
        spec = resources.get(address_of(ENDPOINT, name))
        if spec is None:
            raise ConfigError(f"{site}: Rollout: unknown endpoint {name!r} (declared endpoints: {', '.join(endpoints) or 'none'})")
        if name in claimed:
            raise ConfigError(f"{site}: Rollout: endpoint {name!r} already has a rollout (declared at {claimed[name]})")
        claimed[name] = site
        candidate = resources.get(address_of(BACKEND, new))
        if candidate is None:
            raise ConfigError(f"{site}: Rollout: unknown backend {new!r} (declared backends: {', '.join(backends) or 'none'})")
        traffic = spec.attributes["traffic"]
        if len(traffic) != 1:
            raise ConfigError(
                f"{site}: Rollout: endpoint {name!r} splits its traffic ({', '.join(sorted(traffic))}); a rollout moves "
                "it from one backend: declare the endpoint with backend=<the stable one>"
            )
        (stable,) = traffic
        if stable == new:
            raise ConfigError(
                f"{site}: Rollout: backend {new!r} already takes all of endpoint {name!r}'s traffic: remove the Rollout "
                "(a completed rollout ends this way) or name another new backend"
            )
        if new in spec.attributes["shadow"]:
            raise ConfigError(f"{site}: Rollout: backend {new!r} is a shadow of endpoint {name!r}; a backend cannot be both")
        spec.attributes["rollout"] = {
            "stable": stable, "new": new, "candidate": candidate_digest(candidate.attributes),
            "steps": [float(step) for step in rollout.steps], "pause_s": float(rollout.pause_s),
            "max_wait_s": float(rollout.wait_limit_s),
            "analysis": rollout.gates(), "on_failure": rollout.on_failure,
            "status": "pending", "weight": 0.0, "reason": "",
        }
        spec.attributes["traffic"] = dict(sorted({stable: 1.0, new: 0.0}.items()))
        spec.depends_on.append(candidate.address)
