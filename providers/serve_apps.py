"""Backends as Ray Serve applications: the one builder every provider deploys (and reads back) through.

Each backend is its own Serve application on an internal route
(``/_servectl/<backend>``); what users see as routes is the front proxy's.
The same declarative config goes to Serve whether the CLI is a driver of a
local cluster or talks to a head node's dashboard from afar.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from servectl.model.desired import BACKEND, ENDPOINT
from servectl.providers.front_proxy import internal_route
from servectl.state.document import ResourceState
from servectl.runtime.sealed import seal
from servectl.sensitive import holds_sensitive
from servectl.routing.traffic import allocate

APP_BUILDER = "servectl.runtime.application:build"
SHADOW_QUEUE_LIMIT = 100
SHUTDOWN_POLL_S = 0.2
PROXY_LOCATIONS = {"HeadOnly": "HeadOnly", "EveryNode": "EveryNode", "NoServer": "Disabled"}
AUTOSCALING_KEYS = ("min_replicas", "max_replicas", "target_ongoing_requests")


def runtime_env(package_uri: str, attrs: dict[str, Any]) -> dict[str, Any]:
    """A backend's Ray runtime_env: its code package, environment and private dependencies.

    Sensitive environment variables are left out: Ray's runtime-env agent logs
    every runtime_env it sets up. They travel sealed in the application's
    arguments instead (``sensitive_env``) and the replica sets them before it
    imports the backend's code.
    """
    env: dict[str, Any] = {"working_dir": package_uri}
    plain_env = {name: value for name, value in (attrs.get("env_vars") or {}).items() if not holds_sensitive(value)}
    if plain_env:
        env["env_vars"] = plain_env
    if attrs.get("pip"):
        env["pip"] = {"packages": list(attrs["pip"]), "pip_check": False}
    if attrs.get("conda"):
        env["conda"] = attrs["conda"]
    return env


def sensitive_env(attrs: dict[str, Any]) -> dict[str, Any]:
    """A backend's sensitive environment variables (still marked: the provider seals them)."""
    return {name: value for name, value in sorted((attrs.get("env_vars") or {}).items()) if holds_sensitive(value)}


def sealed(applications: list[dict[str, Any]], key: Callable[[], bytes]) -> list[dict[str, Any]]:
    """The applications as sent to Serve: every sensitive value sealed under the cluster's ``key()`` (asked for only
    when there is one), never in clear."""
    return seal(applications, key()) if holds_sensitive(applications) else applications


def replica_count(attrs: dict[str, Any]) -> dict[str, Any]:
    """A deployment's replica settings: a fixed count, or Serve's autoscaling_config (never both)."""
    scaling = attrs.get("autoscaling")
    if not scaling:
        return {"num_replicas": attrs["num_replicas"]}
    return {"autoscaling_config": {key: value for key, value in scaling.items() if value is not None}}


# Serve deployment settings a backend may set, passed as they are (None: Serve's default).
LIFECYCLE_SETTINGS = ("graceful_shutdown_timeout_s", "health_check_period_s", "health_check_timeout_s")


def queue_limit(declared: Optional[int], shadow_target: bool) -> int:
    """Serve's ``max_queued_requests`` for a backend: as declared (-1: none), and never above SHADOW_QUEUE_LIMIT for
    a shadow's target, whose copies must be refused rather than piled up."""
    limit = declared if declared is not None else -1
    if shadow_target:
        return SHADOW_QUEUE_LIMIT if limit < 0 else min(limit, SHADOW_QUEUE_LIMIT)
    return limit


def applications(
    resources: dict[str, ResourceState], package_for: Callable[[ResourceState], str]
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every backend in ``resources`` as a Serve application, and what the state records live for each backend:
    its application and the code package URI it runs."""
    shadow_targets = {
        name for r in resources.values() if r.kind == ENDPOINT for name in r.attributes.get("shadow", {})
    }
    apps, live = [], {}
    for resource in resources.values():
        if resource.kind != BACKEND:
            continue
        attrs = resource.attributes
        uri = package_for(resource)
        live[resource.address] = {"application": resource.name, "package_uri": uri}
        options = attrs["ray_actor_options"]
        actor_options: dict[str, Any] = {"num_cpus": options["num_cpus"], "num_gpus": options["num_gpus"]}
        if options.get("memory"):
            actor_options["memory"] = options["memory"]
        if options.get("resources"):
            actor_options["resources"] = options["resources"]
        apps.append({
            "name": resource.name,
            "route_prefix": internal_route(resource.name),
            "import_path": APP_BUILDER,
            # Environment variables reach the worker process before any user import.
            "runtime_env": runtime_env(uri, attrs),
            "args": {
                "backend": resource.name,
                "import_path": attrs["code"]["import_path"],
                "code_sha256": attrs["code"]["sha256"],
                "init_args": attrs["init_args"],
                "init_kwargs": attrs["init_kwargs"],
                "batched": attrs.get("max_batch_size") is not None,
                "sensitive_env": sensitive_env(attrs),
            },
            "deployments": [{
                "name": resource.name,
                **replica_count(attrs),
                "max_ongoing_requests": attrs["max_concurrent_queries"],
                # servectl's live settings ride with the user's: both reach
                # running replicas through reconfigure(), without restarts.
                "user_config": {
                    "servectl": {
                        "max_batch_size": attrs.get("max_batch_size"),
                        "batch_wait_timeout_s": attrs.get("batch_wait_timeout_s", 0.01),
                        **({"max_models_per_replica": attrs["max_models_per_replica"]}
                           if attrs.get("max_models_per_replica") is not None else {}),
                    },
                    "user": attrs["user_config"],
                },
                "ray_actor_options": actor_options,
                # A shadow's queue is bounded: copies beyond it are refused, never piled up.
                "max_queued_requests": queue_limit(attrs.get("max_queued_requests"), resource.name in shadow_targets),
                **{key: attrs[key] for key in LIFECYCLE_SETTINGS if attrs.get(key) is not None},
                # A stopping replica takes no new requests and finishes the ones
                # it has; Serve polls for "finished" every 2 s by default, which
                # made every replace and delete wait seconds for nothing.
                "graceful_shutdown_wait_loop_s": SHUTDOWN_POLL_S,
            }],
        })
    return apps, live


def standing(details: dict[str, Any]) -> list[str]:
    """The Serve applications in ``details`` (Serve's ``/api/serve/applications/`` answer), sorted, less those
    Serve is deleting (status ``DELETING``: another state's destroy, a cleanup): those go away whatever is
    deployed next, so they conflict with nothing and hold Serve's settings to nothing."""
    return sorted(name for name, app in (details.get("applications") or {}).items()
                  if (app or {}).get("status") != "DELETING")


def strangers(details: dict[str, Any], managed: set[str]) -> list[str]:
    """The ``standing`` applications in ``details`` that are not in ``managed`` (sorted)."""
    return [name for name in standing(details) if name not in managed]


def live_settings(app_config: dict[str, Any]) -> dict[str, Any]:
    """A backend's attributes as Serve runs them, named as in the state; only what Serve reports back."""
    deployments = app_config.get("deployments") or [{}]
    deployment = deployments[0] or {}
    envelope = deployment.get("user_config") if isinstance(deployment.get("user_config"), dict) else {}
    settings: dict[str, Any] = {}
    scaling = deployment.get("autoscaling_config")
    if isinstance(scaling, dict):  # the live count is the autoscaler's to move: compare the range, not the count
        for key in AUTOSCALING_KEYS:
            if key in scaling:
                settings[f"autoscaling.{key}"] = scaling[key]
    elif "num_replicas" in deployment:
        settings["num_replicas"] = deployment["num_replicas"]
    if "max_ongoing_requests" in deployment:
        settings["max_concurrent_queries"] = deployment["max_ongoing_requests"]
    if "user" in envelope:
        settings["user_config"] = envelope["user"]
    ours = envelope.get("servectl") or {}
    if "max_batch_size" in ours:
        settings["max_batch_size"] = ours["max_batch_size"]
    if "max_models_per_replica" in ours:
        settings["max_models_per_replica"] = ours["max_models_per_replica"]
    code = (app_config.get("args") or {}).get("code_sha256")
    if code:
        settings["code.sha256"] = code
    return settings


def endpoint_policies(resources: dict[str, ResourceState]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Each endpoint's live record (route, weights, key-space segments; a routed model id's own) and its routing
    policy by name.

    Segments are kept while the weights are unchanged and otherwise moved as
    little as possible (``servectl.routing.traffic.allocate``), so shard keys stay put.
    """
    live: dict[str, dict[str, Any]] = {}
    policies: dict[str, dict[str, Any]] = {}
    backends = {r.name: r for r in resources.values() if r.kind == BACKEND}
    for address, resource in resources.items():
        if resource.kind != ENDPOINT:
            continue
        segments = resource.live.get("segments")
        if segments is None or resource.live.get("traffic") != resource.attributes["traffic"]:
            segments = allocate(resource.attributes["traffic"], segments)
        route = resource.attributes["route"]
        live[address] = {"route": route, "traffic": resource.attributes["traffic"], "segments": segments}
        policies[resource.name] = {"segments": segments, "route": route, "shadow": resource.attributes.get("shadow", {})}
        models = resource.attributes.get("models") or {}
        if models:  # each routed model id has its own segments, kept as the endpoint's are
            before = resource.live.get("models") or {}
            held = resource.live.get("model_segments") or {}
            model_segments = {
                model_id: held[model_id] if model_id in held and before.get(model_id) == routed
                else allocate(routed, held.get(model_id))
                for model_id, routed in models.items()
            }
            live[address].update(models=models, model_segments=model_segments)
            policies[resource.name]["models"] = model_segments
        timeouts = {
            name: float(backends[name].attributes["request_timeout_s"])
            for name in sorted({*segments, *(b for owned in policies[resource.name].get("models", {}).values() for b in owned)})
            if name in backends and backends[name].attributes.get("request_timeout_s") is not None
        }
        if timeouts:  # the front proxy's per-backend limit for HTTP requests (absent: its own default)
            policies[resource.name]["timeouts"] = timeouts
        if "deregistration_delay_s" in resource.attributes:  # absent: the front proxy's default (300 s)
            policies[resource.name]["deregistration_delay_s"] = float(resource.attributes["deregistration_delay_s"])
    return live, policies
