"""The request object a backend receives from a handle call.

HTTP requests reach backends as Starlette requests; handle calls get this
picklable stand-in with the same surface the seed's backends use, so one
backend serves both: ``query_params``, ``headers``, ``method``, ``path``,
``await body()``, ``await json()``. Keyword arguments of ``handle.remote(data=…)``
become query parameters, a positional argument the body.
"""
from __future__ import annotations

import json as jsonlib
from dataclasses import dataclass, field
from typing import Any


@dataclass
class HandleRequest:
    """What a handle call delivers to a backend: a picklable stand-in for a Starlette request.

    ``query_params`` are the call's keyword arguments, ``raw_body`` its positional argument as bytes,
    ``headers`` servectl's (endpoint, shard key, shadow); ``method`` and ``path`` default to ``CALL`` and ``/``
    (a shadow copy of an HTTP request keeps the original's); ``stream`` is True for a call made with
    ``options(stream=True)`` (an ingress backend then answers its body chunk by chunk).
    """

    query_params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    raw_body: bytes = b""
    method: str = "CALL"
    path: str = "/"
    stream: bool = False

    @classmethod
    def from_call(cls, args: tuple[Any, ...], kwargs: dict[str, Any], headers: dict[str, str] | None = None) -> "HandleRequest":
        """The request for ``handle.remote(*args, **kwargs)`` with ``headers``.

        ``kwargs`` become the query parameters; the one positional argument becomes the body: bytes as they
        are, a str UTF-8 encoded, anything else as JSON (with ``content-type: application/json``). Raises TypeError for more than one positional argument.
        """
        if len(args) > 1:
            raise TypeError("handle.remote() takes at most one positional argument (the body); pass the rest by keyword")
        body = args[0] if args else b""
        headers = dict(headers or {})
        if isinstance(body, str):
            body = body.encode()
        elif not isinstance(body, bytes):
            body = jsonlib.dumps(body).encode()
            # Said as HTTP would: an ingress app (FastAPI) reads a JSON body by its content type.
            headers.setdefault("content-type", "application/json")
        return cls(query_params=dict(kwargs), headers=headers, raw_body=body)

    async def body(self) -> bytes:
        """The body as bytes (empty when the call passed none), as Starlette's ``await request.body()``."""
        return self.raw_body

    async def json(self) -> Any:
        """The body parsed as JSON (an empty body gives None); raises ValueError when it is not JSON."""
        return jsonlib.loads(self.raw_body or b"null")
