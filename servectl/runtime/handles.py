"""Handles to endpoints: ``get_handle("model_one")`` follows that endpoint's traffic policy.

The backend is picked on the caller's side — the same shard-key hash and the
same segments as the front proxy, so a key lands on the same backend over
HTTP and over a handle — and the call goes straight to that backend's Serve
deployment: no extra hop.
"""
from __future__ import annotations

import random
import re
from typing import Any, Optional

from servectl.routing.policy import PolicyCache
from servectl.runtime.headers import ENDPOINT_HEADER, SHADOW_HEADER, SHARD_KEY_HEADER
from servectl.runtime.request import HandleRequest
from servectl.routing.traffic import KEY_SPACE, backend_at, key_point


class EndpointHandle:
    """A handle to one applied endpoint (see ``get_handle``), following its traffic policy.

    Each call picks a backend from the endpoint's segments (the front proxy's, read through PolicyCache) and calls
    that backend's Serve deployment directly; ``sync`` picks blocking responses or coroutines, and ``shard_key``
    pins every call to one key's backend.
    """

    def __init__(
        self, endpoint: str, sync: bool, shard_key: Optional[str] = None, policy: Optional[PolicyCache] = None,
        stream: bool = False, multiplexed_model_id: str = "", path: str = "/", method: str = "CALL",
    ) -> None:
        self.endpoint = endpoint
        self.sync = sync
        self.shard_key = shard_key
        self.stream = stream
        self.multiplexed_model_id = multiplexed_model_id
        self.path = path
        self.method = method
        self._policy = policy or PolicyCache(endpoint)
        self._deployments: dict[str, Any] = {}

    def options(
        self, shard_key: Optional[str] = None, stream: Optional[bool] = None, multiplexed_model_id: Optional[str] = None,
        path: Optional[str] = None, method: Optional[str] = None,
    ) -> "EndpointHandle":
        """A handle whose calls carry ``shard_key`` (session affinity, as ``X-SERVE-SHARD-KEY`` does over HTTP);
        with ``stream=True``, answer a backend's generator chunk by chunk (Ray Serve's ``handle.options(stream=True)``:
        ``remote()`` then gives an iterator that is also an async iterator); with ``multiplexed_model_id``, are for
        that model (as Ray Serve's option and the ``serve_multiplexed_model_id`` header: the endpoint's ``models=``
        may send the id to its own backend, and Serve prefers replicas that hold it); with ``path`` and ``method``,
        reach that route of an ingress backend's app (``path="/items/7"``, ``method="POST"``; the request's path
        and method for a plain backend). Unset options keep this handle's. Raises ValueError on a model id that
        is not a string of at most 128 characters, a path that is not ``/…`` without spaces, ``?`` or ``#`` (at most
        2,048), or
        a method that is not an HTTP token."""
        if multiplexed_model_id is not None and (not isinstance(multiplexed_model_id, str) or len(multiplexed_model_id) > 128):
            raise ValueError("multiplexed_model_id must be a string of at most 128 characters")
        if path is not None and not (isinstance(path, str) and re.fullmatch(r"/[^\s#?]{0,2047}", path)):
            raise ValueError("path must start with '/' and hold no spaces, '?' or '#' (keyword arguments are the "
                             "query string; at most 2,048 characters)")
        if method is not None and not (isinstance(method, str) and re.fullmatch(r"[A-Za-z]{1,16}", method)):
            raise ValueError("method must be an HTTP method such as GET or POST")
        clone = EndpointHandle(
            self.endpoint, self.sync, self.shard_key if shard_key is None else shard_key, self._policy,
            self.stream if stream is None else stream,
            self.multiplexed_model_id if multiplexed_model_id is None else multiplexed_model_id,
            self.path if path is None else path, self.method if method is None else method.upper(),
        )
        clone._deployments = self._deployments
        return clone

    def pick_backend(self) -> str:
        """The backend for the next call: the one whose segments hold the shard key's point (or a random point) —
        the model id's own segments when the endpoint routes that id apart, else the endpoint's.

        Raises ServectlError when the cluster holds no policy for the endpoint, RuntimeError when no backend has
        traffic.
        """
        policy = self._policy.get()
        segments = (policy.get("models") or {}).get(self.multiplexed_model_id) or policy["segments"]
        point = key_point(self.shard_key) if self.shard_key is not None else random.randrange(KEY_SPACE)
        backend = backend_at(segments, point)
        if backend is None:
            raise RuntimeError(f"endpoint {self.endpoint!r} has no backend with traffic")
        return backend

    def _deployment(self, backend: str) -> Any:
        if backend not in self._deployments:
            self._deployments[backend] = deployment_handle(backend)
        return self._deployments[backend]

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        backend = self.pick_backend()
        headers = {SHARD_KEY_HEADER: self.shard_key} if self.shard_key is not None else {}
        headers[ENDPOINT_HEADER] = self.endpoint
        shadows = [b for b, p in self._policy.get().get("shadow", {}).items() if random.random() < p]
        if shadows:  # the primary's replica copies the call to these, as for HTTP
            headers[SHADOW_HEADER] = ",".join(shadows)
        deployment = self._deployment(backend)
        if self.stream:
            deployment = deployment.options(stream=True)
        if self.multiplexed_model_id:
            deployment = deployment.options(multiplexed_model_id=self.multiplexed_model_id)
        request = HandleRequest.from_call(args, kwargs, headers)
        request.path, request.method, request.stream = self.path, self.method, self.stream
        return deployment.remote(request)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Call the endpoint. Sync handle: returns a response whose ``.result()`` blocks.

        Async handle (``sync=False``): a coroutine — ``await handle.remote(...)`` gives the result. A streaming
        handle (``options(stream=True)``), either kind: the chunks, as ``for chunk in …`` or ``async for chunk in …``.
        """
        if self.sync or self.stream:
            return self._call(args, kwargs)
        return self._remote_async(args, kwargs)

    async def _remote_async(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return await self._call(args, kwargs)


def deployment_handle(backend: str) -> Any:
    """Ray Serve's ``DeploymentHandle`` to a backend's deployment (its application is named after it).

    Serve caches its controller's client once per driver; when Serve was shut down and started again since (a
    destroy, then an apply with another HTTP location, restarts it), that client names a killed actor and every
    lookup fails with ``ActorDiedError``. The controller is found again by name then, once; a second failure raises.
    """
    from ray import serve
    from ray.exceptions import RayActorError

    try:
        return serve.get_deployment_handle(backend, app_name=backend)
    except RayActorError:
        from ray.serve import context

        context._set_global_client(None)  # what ``serve.context._disconnect`` does: the next call finds it by name
        return serve.get_deployment_handle(backend, app_name=backend)


def get_handle(endpoint: str, sync: bool = True) -> EndpointHandle:
    """A handle to an applied endpoint, from a backend or a driver connected to the cluster."""
    return EndpointHandle(endpoint, sync)
