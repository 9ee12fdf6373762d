"""Route proof: a replica serves an HTTP request only if servectl's front proxy routed it.

Each backend is a Serve application on an internal route, and Serve routes
on the decoded path, so a request that slips past the front proxy's rules
(``/%5Fservectl/canary``, Serve's own port, a method or header the rules did
not foresee) would reach a backend without its endpoint's policy. The front
proxy therefore removes any ``x-servectl-proof`` header a client sent and sets
its own on every request an endpoint's policy routed: an HMAC-SHA256 of a
fixed label under the cluster's Ray auth token, which only the proxies and the
cluster's members can compute. The replica answers 404 to an HTTP request
without it and takes the header off before the backend's code sees it.
Handle calls (``HandleRequest``) come through Ray itself and need no proof.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
from typing import Any, Optional

from servectl.runtime.headers import PROOF_HEADER

PROOF_LABEL = b"servectl route proof v1"


def route_proof(token: str) -> str:
    """The proof value for the cluster whose Ray auth token is ``token`` (64 hex characters)."""
    return hmac.new(token.encode(), PROOF_LABEL, hashlib.sha256).hexdigest()


@functools.lru_cache(maxsize=1)
def worker_route_proof() -> Optional[str]:
    """The proof on a Ray worker, from the token Ray gives its workers (``sealed.worker_token``); None on a cluster
    without token auth, where there is nothing to prove with (and nothing keeps anyone off its ports either)."""
    from servectl.runtime.sealed import SealError, worker_token

    try:
        return route_proof(worker_token())
    except SealError:
        return None


def is_http(request: Any) -> bool:
    """Whether ``request`` came over HTTP (an ASGI scope of type http or websocket), not from a handle."""
    scope = getattr(request, "scope", None)
    return isinstance(scope, dict) and scope.get("type") in ("http", "websocket")


def take_proof(request: Any, expected: str) -> bool:
    """Whether the HTTP ``request`` carries ``expected``; the header is removed either way (the backend never sees it)."""
    scope = request.scope
    name = PROOF_HEADER.encode()
    given = [value for key, value in scope.get("headers", []) if key.lower() == name]
    scope["headers"] = [(key, value) for key, value in scope.get("headers", []) if key.lower() != name]
    if "_headers" in getattr(request, "__dict__", {}):
        del request.__dict__["_headers"]  # Starlette caches the headers it read
    return len(given) == 1 and hmac.compare_digest(given[0], expected.encode())
