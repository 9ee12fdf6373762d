"""The Serve deploy step both providers take for a backend or endpoint change, written once.

Send the whole Serve config (``serve deploy``'s ServeDeploySchema) with
sensitive values sealed, wait until it is live (replicas on the new version,
deletions gone, routes served), and return what the state records and the
endpoint policies the provider then publishes its own way (local: the front
proxy and Serve's KV store; AWS: the routing document the node agents apply).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

from servectl.errors import ProviderError
from servectl.model.desired import BACKEND
from servectl.model.plan import Action, ResourceChange
from servectl.providers import serve_apps, serve_health
from servectl.routing.policy import POLICY_TTL_S
from servectl.state.document import ResourceState

# A handle re-reads its endpoint's policy at most every POLICY_TTL_S seconds; the margin covers the read itself
# (a KV round trip) so that one which read just before a move has read it again before a backend goes.
HANDLE_POLICY_MARGIN_S = 0.2


class HandleDrain:
    """When each backend stopped being routed to, so that deleting it waits only until every handle has re-read
    the policy that moved traffic off it — not a policy period per deleted backend.

    A provider calls ``written(policies)`` after each policy write and ``wait(change)`` before each change.
    """

    def __init__(self) -> None:
        self._routed: Optional[set[str]] = None
        self._first_write_at = 0.0
        self._released_at: dict[str, float] = {}

    def written(self, policies: dict[str, dict[str, Any]]) -> None:
        """Record a policy write (endpoint name → policy, as handles read them), now."""
        now = time.monotonic()
        routed = {
            name for policy in policies.values()
            for name in (*policy.get("segments", {}), *policy.get("shadow", {}),
                         *(b for owned in (policy.get("models") or {}).values() for b in owned))
        }
        if self._routed is None:
            self._first_write_at = now
        else:
            self._released_at.update({name: now for name in self._routed - routed})
        for name in routed:
            self._released_at.pop(name, None)
        self._routed = routed

    def wait(self, change: ResourceChange) -> None:
        """Before a backend is deleted, sleep until every handle has re-read the policy that moved traffic off it.

        A backend routed to by no policy this process wrote was let go at its first write or before (a process
        that wrote none: before it started, long enough ago).
        """
        if change.kind == BACKEND and change.action is Action.DELETE:
            released = self._released_at.get(change.name, self._first_write_at)
            time.sleep(max(0.0, released + POLICY_TTL_S + HANDLE_POLICY_MARGIN_S - time.monotonic()))


def deploy_serve(
    change: ResourceChange,
    resources: dict[str, ResourceState],
    package_for: Callable[[ResourceState], str],
    proxy_location: str,
    http_options: dict[str, Any],
    sealing_key: Callable[[], bytes],
    details: Callable[[], dict[str, Any]],
    deploy: Callable[[dict[str, Any]], None],
    timeout_s: float,
    routes_problem: Optional[Callable[[set[str]], Optional[str]]] = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Deploy ``resources`` to Serve for ``change`` and wait (at most ``timeout_s`` seconds) until it is live.

    ``package_for(resource)`` is the code package URI a backend runs (its recorded one unless this change
    restarts it); ``details()`` reads Serve's applications (the dashboard's ``serve_details``); ``deploy(config)``
    sends the config. Returns (live identifiers by address, endpoint policies by endpoint name). Raises
    ProviderError naming ``change.address`` when Serve rejects the config or it does not become live.
    """
    before = details().get("applications") or {}
    applications, backends_live = serve_apps.applications(resources, package_for)
    config = {
        "proxy_location": proxy_location,
        "http_options": http_options,
        # Sensitive values go sealed: Serve logs builder arguments and Ray every runtime_env.
        "applications": serve_apps.sealed(applications, sealing_key),
    }
    try:
        deploy(config)
    except ProviderError as err:
        refused = getattr(err, "status", None) == 400  # a 5xx or no answer is the dashboard's failure, not Serve's verdict
        what = "Serve rejected the configuration" if refused else "deploying to Serve failed"
        raise ProviderError(f"{change.address}: {what}: {err}") from None
    serve_health.wait_until_live(details, change, before, config, timeout_s, routes_problem)
    live, policies = serve_apps.endpoint_policies(resources)
    live.update(backends_live)
    return live, policies
