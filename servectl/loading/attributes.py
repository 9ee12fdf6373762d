"""Declarations → the plain attributes the planner diffs and the state records (backends, endpoints, rollouts),
and the ``LocalRay`` block → its provider spec.

Every attribute is JSON-serialisable: the same dicts go into the state file and the plan.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional

from servectl.config.blocks import LocalRay, ingress_problem
from servectl.config.resources import DEFAULT_DEREGISTRATION_DELAY_S, Backend, Endpoint
from servectl.errors import ConfigError
from servectl.loading.code_identity import code_identity
from servectl.model.desired import ProviderSpec, ResourceSpec, address_of
from servectl.model.kinds import BACKEND, ENDPOINT, in_place_attributes
from servectl.sensitive import to_plain
from servectl.statuses import ProviderKind


def provider_spec(declared: Optional[LocalRay]) -> ProviderSpec:
    """Resolve the provider block, letting the environment fill what the config leaves open.

    As Terraform providers read AWS_REGION, ``SERVECTL_RAY_ADDRESS`` and
    ``SERVECTL_HTTP_PORT`` point an unchanged config at another cluster (tests, CI), and ``SERVECTL_INGRESS``
    picks its data path (``direct`` or ``python``) where the config does not. Raises ConfigError on a value
    that is not one of these.
    """
    block = declared or LocalRay()
    address = block.address or os.environ.get("SERVECTL_RAY_ADDRESS") or None
    port = block.http_port
    if "http_port" not in block.model_fields_set and os.environ.get("SERVECTL_HTTP_PORT"):
        raw = os.environ["SERVECTL_HTTP_PORT"]
        if not raw.isdigit() or not 1 <= int(raw) <= 65535:
            raise ConfigError(f"SERVECTL_HTTP_PORT={raw!r} is not a port number (1-65535)")
        port = int(raw)
    ingress = block.ingress
    if "ingress" not in block.model_fields_set and os.environ.get("SERVECTL_INGRESS"):
        ingress = os.environ["SERVECTL_INGRESS"]
        problem = ingress_problem(ingress, block.http_location)
        if problem:
            raise ConfigError(f"SERVECTL_INGRESS={ingress!r} {problem}")
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
        ingress=ingress,
    )


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
        "request_timeout_s": backend.request_timeout_s,
        "max_queued_requests": backend.max_queued_requests,
        "graceful_shutdown_timeout_s": backend.graceful_shutdown_timeout_s,
        "health_check_period_s": backend.health_check_period_s,
        "health_check_timeout_s": backend.health_check_timeout_s,
        "max_models_per_replica": backend.max_models_per_replica,
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


def _weights(endpoint: Endpoint, traffic: dict[Any, float], backend_names: set[str], relation: str) -> dict[str, float]:
    named: dict[str, float] = {}
    for key, weight in traffic.items():
        name = _backend_named(endpoint, key, backend_names, relation)
        named[name] = named.get(name, 0.0) + float(weight)
    return dict(sorted(named.items()))


def endpoint_attributes(
    endpoint: Endpoint, backend_names: set[str], multiplexed: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """An endpoint's plain attributes: ``route``, ``traffic`` (backend name → weight; keys naming the same backend
    are summed) and ``shadow`` (backend name → proportion; 0 leaves it out), both sorted by name, as Ray Serve
    1.x's ``set_traffic`` and ``shadow_traffic`` take them; and, only when it routes model ids apart, ``models``
    (model id → its own traffic, sorted); ``deregistration_delay_s`` only when not the default (300 s). Raises
    ConfigError when a key names a backend not in ``backend_names``,
    or when model ids are routed while a backend involved is not in ``multiplexed`` (it could not load them).
    """
    traffic = _weights(endpoint, endpoint.traffic, backend_names, "sends traffic to")
    shadow: dict[str, float] = {}
    for key, proportion in endpoint.shadow.items():
        name = _backend_named(endpoint, key, backend_names, "shadows to")
        if proportion > 0:  # a proportion of 0 means: stop shadowing
            shadow[name] = float(proportion)
    attributes: dict[str, Any] = {"route": endpoint.route, "traffic": traffic, "shadow": dict(sorted(shadow.items()))}
    models = {
        model_id: _weights(endpoint, routed, backend_names, f"sends model {model_id!r} to")
        for model_id, routed in sorted(endpoint.models.items())
    }
    for model_id, routed in models.items():
        for name in routed:
            if name not in multiplexed:
                raise ConfigError(
                    f"{endpoint.declared_at}: endpoint {endpoint.name!r} sends model {model_id!r} to backend {name!r}, "
                    "which loads no models: give it max_models_per_replica=N over a @serve.multiplexed loader"
                )
    if models:
        for name in traffic:
            if name not in multiplexed:
                raise ConfigError(
                    f"{endpoint.declared_at}: endpoint {endpoint.name!r} routes model ids, but its traffic goes to "
                    f"backend {name!r}, which loads no models: give it max_models_per_replica=N over a "
                    "@serve.multiplexed loader, or drop models="
                )
        attributes["models"] = models
    if endpoint.deregistration_delay_s != DEFAULT_DEREGISTRATION_DELAY_S:  # only when declared: a state recorded
        attributes["deregistration_delay_s"] = float(endpoint.deregistration_delay_s)  # before it plans no change
    return attributes


def candidate_digest(attributes: dict[str, Any]) -> str:
    """What a rollout's new backend is, for telling one candidate from the next: everything that restarts it."""
    restarting = {key: value for key, value in attributes.items() if key not in in_place_attributes(BACKEND)}
    return hashlib.sha256(json.dumps(restarting, sort_keys=True, default=str).encode()).hexdigest()


def declare_rollouts(rollouts: list[Any], resources: dict[str, ResourceSpec]) -> None:
    """Each ``Rollout`` becomes its endpoint's ``rollout`` attribute, starting pending: all traffic on stable.

    ``servectl.planning.rollout_position.resolve`` then puts in the position the state records.
    """
    claimed: dict[str, str] = {}
    endpoints = sorted(spec.name for spec in resources.values() if spec.kind == ENDPOINT)
    backends = sorted(spec.name for spec in resources.values() if spec.kind == BACKEND)
    for rollout in rollouts:
        site, name, new, model = rollout.declared_at, rollout.endpoint_name, rollout.new_name, rollout.model
        spec = resources.get(address_of(ENDPOINT, name))
        if spec is None:
            raise ConfigError(f"{site}: Rollout: unknown endpoint {name!r} (declared endpoints: {', '.join(endpoints) or 'none'})")
        if name in claimed:
            raise ConfigError(f"{site}: Rollout: endpoint {name!r} already has a rollout (declared at {claimed[name]})")
        claimed[name] = site
        candidate = resources.get(address_of(BACKEND, new))
        if candidate is None:
            raise ConfigError(f"{site}: Rollout: unknown backend {new!r} (declared backends: {', '.join(backends) or 'none'})")
        routed = (spec.attributes.get("models") or {}).get(model) if model is not None else None
        traffic = routed or spec.attributes["traffic"]
        what = f"model {model!r} of endpoint {name!r}" if model is not None else f"endpoint {name!r}"
        if len(traffic) != 1:
            raise ConfigError(
                f"{site}: Rollout: {what} splits its traffic ({', '.join(sorted(traffic))}); a rollout moves "
                "it from one backend: send it to the stable one alone"
            )
        (stable,) = traffic
        if model is not None:
            for backend in sorted({new, stable, *spec.attributes["traffic"]}):
                if resources[address_of(BACKEND, backend)].attributes.get("max_models_per_replica") is None:
                    raise ConfigError(
                        f"{site}: Rollout: model {model!r} of endpoint {name!r} involves backend {backend!r}, which "
                        "loads no models: give it max_models_per_replica=N over a @serve.multiplexed loader"
                    )
        if stable == new:
            raise ConfigError(
                f"{site}: Rollout: backend {new!r} already takes all of endpoint {name!r}'s traffic: remove the Rollout "
                "(a completed rollout ends this way) or name another new backend"
            )
        if new in spec.attributes["shadow"]:
            raise ConfigError(f"{site}: Rollout: backend {new!r} is a shadow of endpoint {name!r}; a backend cannot be both")
        spec.attributes["rollout"] = {
            "stable": stable, "new": new, "model": model, "candidate": candidate_digest(candidate.attributes),
            "steps": [float(step) for step in rollout.steps], "pause_s": float(rollout.pause_s),
            "max_wait_s": float(rollout.wait_limit_s),
            "analysis": rollout.gates(), "on_failure": rollout.on_failure,
            "status": "pending", "weight": 0.0, "reason": "",
        }
        start = dict(sorted({stable: 1.0, new: 0.0}.items()))
        if model is None:
            spec.attributes["traffic"] = start
        else:
            spec.attributes["models"] = dict(sorted({**(spec.attributes.get("models") or {}), model: start}.items()))
        spec.depends_on.append(candidate.address)
