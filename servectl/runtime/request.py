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
    query_params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    raw_body: bytes = b""
    method: str = "CALL"
    path: str = "/"

    @classmethod
    def from_call(cls, args: tuple[Any, ...], kwargs: dict[str, Any], headers: dict[str, str] | None = None) -> "HandleRequest":
        if len(args) > 1:
            raise TypeError("handle.remote() takes at most one positional argument (the body); pass the rest by keyword")
        body = args[0] if args else b""
        if isinstance(body, str):
            body = body.encode()
        elif not isinstance(body, bytes):
            body = jsonlib.dumps(body).encode()
        return cls(query_params=dict(kwargs), headers=dict(headers or {}), raw_body=body)

    async def body(self) -> bytes:
        return self.raw_body

    async def json(self) -> Any:
        return jsonlib.loads(self.raw_body or b"null")
