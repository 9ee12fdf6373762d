"""Ray's dashboard REST API with the cluster's auth token: Serve's state, Serve deploys, nodes, code packages.

This is how servectl talks to a cluster it is not a driver of (the AWS
provider's head node): plain HTTP, no Ray import, no GCS connection. The
dashboard port is never opened to the world; servectl reaches it from inside
the cluster's network or through a tunnel (``AwsRay(dashboard_url=...)``).
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Optional

from servectl.errors import ProviderError

SERVE_APPLICATIONS = "/api/serve/applications/"


DEPLOY_TIMEOUT_S = 120.0
DEPLOY_RETRY_FIRST_S = 1.0  # the first pause before a deploy that met a 5xx is sent again; doubled up to the next
DEPLOY_RETRY_MAX_S = 8.0


class DashboardError(ProviderError):
    """Ray's dashboard answered ``status`` (an HTTP error code), or None when it did not answer at all."""

    def __init__(self, message: str, status: Optional[int]) -> None:
        super().__init__(message)
        self.status = status


class RayDashboard:
    """A client of one Ray dashboard at ``url``, sending ``token`` (when given) as a Bearer token.

    Each request waits at most ``timeout_s`` seconds. A refusal, an error status or no answer raises ProviderError
    (401 and 403 are named as a token problem).
    """

    def __init__(self, url: str, token: Optional[str] = None, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def _request(self, method: str, path: str, body: Optional[bytes] = None, content_type: str = "application/json",
                 ok: tuple[int, ...] = (200,), timeout_s: Optional[float] = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", content_type)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s or self.timeout_s) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            detail = err.read().decode("utf-8", "replace").strip().splitlines()
            if err.code in ok:
                return err.code, b""
            if err.code in (401, 403):
                raise DashboardError(
                    f"Ray's dashboard at {self.url} refused servectl's token ({err.code}); check the cluster's auth token",
                    err.code,
                ) from None
            last = detail[-1][:300] if detail else err.reason
            raise DashboardError(f"Ray's dashboard at {self.url} answered {err.code} to {method} {path}: {last}",
                                 err.code) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise DashboardError(f"cannot reach Ray's dashboard at {self.url}: {reason}", None) from None

    def _json(self, method: str, path: str, payload: Any = None, timeout_s: Optional[float] = None) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        _, raw = self._request(method, path, body, timeout_s=timeout_s)
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise ProviderError(f"Ray's dashboard at {self.url} sent something that is not JSON for {path}") from None

    # -- Serve ----------------------------------------------------------------------------------------------------

    def serve_details(self) -> dict[str, Any]:
        """Serve's state (ServeInstanceDetails as JSON): applications, their deployed configs, replicas."""
        return self._json("GET", SERVE_APPLICATIONS) or {}

    def replica_targets(self) -> dict[str, list[tuple[str, int]]]:
        """Each application's running ingress replicas that take HTTP themselves (Serve's direct ingress,
        ``RAY_SERVE_ENABLE_DIRECT_INGRESS=1`` on the cluster's nodes): application name -> [(node address, port)],
        from Serve's target groups. Empty for an application served only through Serve's proxy (direct ingress
        off, or no replica running yet: Serve then lists its proxy, which is not a replica)."""
        targets: dict[str, list[tuple[str, int]]] = {}
        for group in self.serve_details().get("target_groups") or []:
            if not isinstance(group, dict) or group.get("protocol") != "HTTP" or not group.get("app_name"):
                continue
            replicas = [
                (str(target.get("ip")), int(target.get("port")))
                for target in group.get("targets") or []
                if isinstance(target, dict) and str(target.get("name", "")).startswith("SERVE_REPLICA::")
                and isinstance(target.get("port"), int)
            ]
            if replicas:
                targets.setdefault(str(group["app_name"]), []).extend(replicas)
        return targets

    def deploy(self, config: dict[str, Any]) -> None:
        """Declare every Serve application at once (ServeDeploySchema), as `serve deploy` does; at most
        DEPLOY_TIMEOUT_S seconds in all (the dashboard starts Serve first when it is not running: its controller and
        a proxy per node, slow on a busy cluster).

        A 400 is Serve refusing the config and is raised at once. A 5xx is the dashboard failing on the way
        (on a loaded cluster Serve's start can lose a proxy actor: "the actor never ran"; the controller then
        starts it again), and the deploy is declarative — the same whole config, sent again, means the same
        thing — so it is sent again after 1, 2, 4, 8… seconds until the deadline, when the last error is raised
        (DashboardError, ``status`` set).
        """
        deadline = time.monotonic() + DEPLOY_TIMEOUT_S
        pause = DEPLOY_RETRY_FIRST_S
        while True:
            left = deadline - time.monotonic()
            try:
                self._json("PUT", SERVE_APPLICATIONS, config, timeout_s=max(self.timeout_s, left))
                return
            except DashboardError as err:
                if err.status is None or err.status < 500 or time.monotonic() + pause >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, DEPLOY_RETRY_MAX_S)

    def shutdown_serve(self) -> None:
        """Shut Serve down with all its applications, as ``serve shutdown`` does; ProviderError on a failure."""
        self._request("DELETE", SERVE_APPLICATIONS)

    # -- nodes ----------------------------------------------------------------------------------------------------

    def nodes(self) -> list[dict[str, Any]]:
        """Alive nodes as Ray's state API lists them: node_ip, resources_total, labels."""
        answer = self._json("GET", "/api/v0/nodes?limit=10000&detail=1")
        try:
            rows = answer["data"]["result"]["result"]
        except (TypeError, KeyError):
            raise ProviderError(f"Ray's dashboard at {self.url} listed nodes in an unknown shape") from None
        return [row for row in rows if row.get("state") == "ALIVE"]

    # -- code packages (runtime_env working_dir in the cluster's GCS) ---------------------------------------------

    def _package_path(self, uri: str) -> str:
        protocol, _, name = uri.partition("://")
        return f"/api/packages/{protocol}/{urllib.parse.quote(name)}"

    def package_exists(self, uri: str) -> bool:
        """Whether the cluster's GCS holds the runtime_env package ``uri`` (``gcs://…``); an answer other than 200
        or 404 raises ProviderError.
        """
        status, _ = self._request("GET", self._package_path(uri), ok=(200, 404))
        return status == 200

    def upload_package(self, uri: str, zipped: bytes) -> None:
        """Store the zip ``zipped`` in the cluster's GCS as package ``uri``, as Ray's job submission client uploads a
        working_dir. Raises ProviderError when the dashboard refuses it.
        """
        self._request("PUT", self._package_path(uri), zipped, content_type="application/octet-stream")
