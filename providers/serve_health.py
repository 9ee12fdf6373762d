"""Whether Serve runs what servectl sent it: the wait after every deploy, and the backends as Serve reports them.

Both providers read Serve's details through the dashboard REST API, so the
readiness rules (every replica on the new version, the old ones gone,
autoscaled backends within their range, the routes updated) are one code path.
"""
from __future__ import annotations

import json
import re
import time
import urllib.request
from typing import Any, Callable, Optional

from servectl.model.desired import BACKEND
from servectl.errors import ProviderError
from servectl.model.plan import Action, ResourceChange
from servectl.providers import serve_apps
from servectl.providers.base import LiveBackend
from servectl.providers.front_proxy import internal_route
from servectl.runtime.sealed import SealError, unseal

WAIT_POLL_S = 0.25
STALE_STATUS_GRACE_S = 5.0  # how long a failure status from before a deploy may still be Serve's old word
REVERT_GRACE_S = 30.0  # a revert sends what ran before: a failure status this early is the failed change's


def wait_until_live(
    details: Callable[[], dict[str, Any]],
    change: ResourceChange,
    before: dict[str, Any],
    config: dict[str, Any],
    timeout_s: float,
    routes_problem: Optional[Callable[[set[str]], Optional[str]]] = None,
) -> None:
    """Block until ``config`` is live: replicas all on the new version, routes served, deletions gone.

    ``before`` is Serve's applications before the deploy (a replaced backend's
    old replicas must be gone); ``routes_problem`` checks the HTTP side where
    the provider can reach it.
    """
    wanted = {app["name"]: app for app in config["applications"]}
    old_replicas: set[str] = set()
    if change.kind == BACKEND and change.action is Action.REPLACE and change.name in before:
        running = before[change.name].get("deployed_app_config") or {}
        if change.name not in wanted or restarts(running, wanted[change.name]):
            deployment = before[change.name]["deployments"].get(change.name, {})
            old_replicas = {r["replica_id"] for r in deployment.get("replicas", [])}
        # Else Serve already runs exactly this (an apply killed after it deployed the change): nothing restarts.
    started = time.time()
    deadline = started + timeout_s
    last = "waiting for Serve"
    moved: set[str] = set()  # applications seen in another status than before the deploy
    while time.time() < deadline:
        apps = details().get("applications", {})
        for name, app in apps.items():
            if _status(app) != _status(before.get(name) or {}):
                moved.add(name)
        # A status Serve reported before it took the new config is not this deploy's verdict: a failed change's
        # revert met its DEPLOY_FAILED and gave up. Once the status moved (or after a grace), it is. A revert (a
        # no-op change back to what ran) meets the failed change still settling: it believes a failure only late.
        elapsed = time.time() - started
        if change.action is Action.NOOP:
            trusted = set(apps) if elapsed > REVERT_GRACE_S else set()
        else:
            trusted = moved | (set(apps) if elapsed > STALE_STATUS_GRACE_S else set())
        problem = not_ready(change, apps, wanted, old_replicas, trusted)
        if problem is None and routes_problem is not None:
            problem = routes_problem(set(wanted))
        if problem is None:
            return
        last = problem
        time.sleep(WAIT_POLL_S)
    raise ProviderError(f"{change.address}: not healthy after {timeout_s:.0f}s ({last})")


def restarts(running: dict[str, Any], sent: dict[str, Any]) -> bool:
    """Whether Serve starts new replicas for ``sent`` where it runs ``running`` (code, arguments, environment, resources)."""
    def shape(app: dict[str, Any]) -> tuple:
        deployment = (app.get("deployments") or [{}])[0] or {}
        return (app.get("import_path"), app.get("args"), app.get("runtime_env"), deployment.get("ray_actor_options"))
    return shape(running) != shape(sent)


def _status(app: dict[str, Any]) -> str:
    status = app.get("status", "")
    return str(getattr(status, "value", status))


def not_ready(
    change: ResourceChange, apps: dict[str, Any], wanted: dict[str, Any], old_replicas: set[str],
    trusted: Optional[set[str]] = None,
) -> Optional[str]:
    """What still keeps the change from being live (None: it is); raises when Serve says the deploy failed.

    ``trusted``: the applications whose failure status may be believed (None: all).
    """
    for name in set(apps) - set(wanted):
        return f"application {name} still shutting down"
    for name, app_config in wanted.items():
        app = apps.get(name)
        if app is None:
            return f"application {name} not created yet"
        status = str(getattr(app["status"], "value", app["status"]))
        deployment = app["deployments"].get(name)
        dep_status = str(getattr(deployment["status"], "value", deployment["status"])) if deployment else ""
        if status == "DEPLOY_FAILED" or (dep_status in ("DEPLOY_FAILED", "UNHEALTHY") and name == change.name):
            if trusted is not None and name not in trusted:
                return f"application {name} has not taken the new config yet"
            messages = [(deployment or {}).get("message") or "", app.get("message") or ""]
            raise ProviderError(f"backend.{name}: deploy failed: {failure_reason(messages)}")
        if status != "RUNNING":
            return f"application {name} is {status}"
        if deployment is None:
            return f"deployment {name} not created yet"
        states = [str(getattr(r["state"], "value", r["state"])) for r in deployment.get("replicas", [])]
        running = [r for r in deployment.get("replicas", []) if str(getattr(r["state"], "value", r["state"])) == "RUNNING"]
        scaling = app_config["deployments"][0].get("autoscaling_config")
        if scaling is None:
            target = app_config["deployments"][0]["num_replicas"]
            if len(running) != target or len(states) != target:
                return f"backend {name}: {len(running)}/{target} replicas running"
        else:  # the autoscaler owns the count: enough running within the range is ready
            low = scaling.get("initial_replicas")
            low = scaling["min_replicas"] if low is None else low
            if len(running) < low or dep_status not in ("HEALTHY", "UPSCALING", "DOWNSCALING"):
                return f"backend {name}: {len(running)}/{low}+ replicas running ({dep_status})"
        if name == change.name and old_replicas & {r["replica_id"] for r in running}:
            return f"backend {name}: old replicas still serving"
        if (app.get("route_prefix") or None) != app_config["route_prefix"]:
            return f"application {name} route not updated yet"
    return None


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")


def failure_reason(messages: list[str]) -> str:
    """The user's exception (``RuntimeError: weights missing``) from Serve's status messages.

    Serve wraps a replica's traceback in prose; the last exception line in it
    is what the user raised. Without one, the last line Serve wrote will do.
    """
    for message in messages:
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        exceptions = [line for line in lines if _EXCEPTION_LINE.match(line) and not line.startswith("ray.")]
        if exceptions:
            return exceptions[-1]
    for message in messages:
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return "no message from Serve"


def live_backends(details: dict[str, Any], key: Optional[bytes] = None) -> dict[str, LiveBackend]:
    """Every Serve application as the backend it runs: health, replica counts, the settings drift compares.

    With the cluster's sealing ``key``, sealed values are opened, so drift
    compares a sensitive setting by value (and reports only that it changed).
    """
    backends = {}
    for name, app in (details.get("applications") or {}).items():
        deployment = (app.get("deployments") or {}).get(name) or {}
        replicas = deployment.get("replicas") or []
        states = [str(getattr(r["state"], "value", r["state"])) for r in replicas]
        app_status = str(getattr(app["status"], "value", app["status"]))
        status = str(getattr(deployment.get("status"), "value", deployment.get("status") or app_status))
        if app_status == "DEPLOY_FAILED":
            status = app_status
        backends[name] = LiveBackend(
            status=status,
            running=states.count("RUNNING"),
            replicas=len(states),
            message=str(deployment.get("message") or app.get("message") or ""),
            settings=serve_apps.live_settings(_opened(app.get("deployed_app_config") or {}, key)),
        )
    return backends


def _opened(app_config: dict[str, Any], key: Optional[bytes]) -> dict[str, Any]:
    if key is None:
        return app_config
    try:
        return unseal(app_config, key)
    except SealError:
        return app_config  # sealed under another token: it reads as changed, which it is


def routes_problem(serve_port: int, apps: set[str], host: str = "127.0.0.1") -> Optional[str]:
    """Serve's proxy learns routes a little after the controller: None once it serves every backend's, and no other."""
    url = f"http://{host}:{serve_port}/-/routes"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            routes = json.loads(response.read())
    except (OSError, ValueError) as err:
        return f"Serve's HTTP proxy not answering at {url}: {err}"
    missing = sorted(name for name in apps if internal_route(name) not in routes)
    stale = sorted(r for r, app in routes.items() if app not in apps)
    if missing:
        return f"Serve does not route to backend {missing[0]} yet"
    if stale:
        return f"Serve still routes {stale[0]}"
    return None
