"""Where handles find traffic policies: Ray's internal key-value store of the cluster.

The provider writes one record per endpoint when it applies (the same
segments the front proxy uses); handles in replicas and drivers read it,
refreshing at most every POLICY_TTL_S. Apply waits that long after moving
traffic before it deletes a backend, so no handle still points at it.
"""
from __future__ import annotations

import json
import time
from typing import Any, Optional

NAMESPACE = "servectl"
POLICY_TTL_S = 1.0


def policy_key(endpoint: str) -> bytes:
    """The internal-KV key (in NAMESPACE) that holds ``endpoint``'s policy: ``b"policy/<endpoint>"``."""
    return f"policy/{endpoint}".encode()


def write_policies(policies: dict[str, dict[str, Any]], removed: set[str]) -> None:
    """Store each endpoint's policy in the cluster's internal KV as JSON, overwriting, and delete the ``removed`` ones.

    ``policies`` maps endpoint name to ``{"segments", "route", "shadow"}``. Needs a process connected to Ray.
    """
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    for endpoint, policy in policies.items():
        _internal_kv_put(policy_key(endpoint), json.dumps(policy).encode(), overwrite=True, namespace=NAMESPACE)
    for endpoint in removed:
        _internal_kv_del(policy_key(endpoint), namespace=NAMESPACE)


def applied_endpoints() -> set[str]:
    """The names of the endpoints whose policies the cluster's internal KV holds."""
    from ray.experimental.internal_kv import _internal_kv_list

    keys = _internal_kv_list(b"policy/", namespace=NAMESPACE)
    return {k.decode().split("/", 1)[1] for k in keys}


def read_policies() -> dict[str, dict[str, Any]]:
    """Every applied endpoint's policy as the cluster holds it."""
    from ray.experimental.internal_kv import _internal_kv_get

    policies = {}
    for endpoint in sorted(applied_endpoints()):
        raw = _internal_kv_get(policy_key(endpoint), namespace=NAMESPACE)
        if raw is not None:
            policies[endpoint] = json.loads(raw)
    return policies


class PolicyCache:
    """One endpoint's policy, re-read from the cluster at most every POLICY_TTL_S."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._policy: Optional[dict[str, Any]] = None
        self._read_at = 0.0

    def get(self) -> dict[str, Any]:
        """The endpoint's policy (``{"segments", "route", "shadow"}``), re-read when older than POLICY_TTL_S seconds.

        Raises ServectlError when the cluster holds no policy for the endpoint.
        """
        now = time.monotonic()
        if self._policy is None or now - self._read_at > POLICY_TTL_S:
            from ray.experimental.internal_kv import _internal_kv_get

            raw = _internal_kv_get(policy_key(self.endpoint), namespace=NAMESPACE)
            if raw is None:
                from servectl.errors import ServectlError

                raise ServectlError(f"no endpoint {self.endpoint!r} is applied on this cluster (check its name)")
            self._policy = json.loads(raw)
            self._read_at = now
        return self._policy
