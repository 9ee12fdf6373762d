"""The Serve application builder that runs on the workers, one application per backend.

Serve imports ``servectl.runtime.application:build`` with the backend's
``args`` inside the backend's runtime environment (the uploaded config dir), so
the user's code is imported where it runs, never pickled from the CLI. The
code hash travels in ``args``: Serve derives the code version from them, so
replicas restart exactly when the code, init arguments or resources change,
while replica count, concurrency and user_config update in place.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any

from ray import serve


def import_target(import_path: str) -> Any:
    module_name, _, attr = import_path.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    return target


def _is_async(func: Any) -> bool:
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(getattr(func, "__call__", None))


def replica_class(args: dict[str, Any]) -> type:
    """A class Serve can run whose instances hold the user's backend.

    A sync user ``__call__`` gets a sync wrapper so Serve runs it the way it
    runs any sync method, rather than blocking the replica's event loop.
    """
    target = import_target(args["import_path"])
    init_args = list(args.get("init_args") or [])
    init_kwargs = dict(args.get("init_kwargs") or {})
    is_class = inspect.isclass(target)
    call = target.__call__ if is_class else target
    if is_class and not callable(getattr(target, "__call__", None)):
        raise TypeError(f"{args['import_path']} has no __call__(self, request) method")

    class BackendReplica:
        def __init__(self) -> None:
            self.instance = target(*init_args, **init_kwargs) if is_class else None
            self.handler = self.instance if is_class else target

        def reconfigure(self, config: Any) -> None:
            method = getattr(self.instance, "reconfigure", None)
            if method is not None:
                method(config)

    if _is_async(call):
        async def __call__(self: Any, request: Any) -> Any:
            return await self.handler(request)
    else:
        def __call__(self: Any, request: Any) -> Any:  # type: ignore[misc]
            return self.handler(request)

    BackendReplica.__call__ = __call__  # type: ignore[attr-defined]
    BackendReplica.__name__ = BackendReplica.__qualname__ = f"Backend_{args['backend']}"
    return BackendReplica


def build(args: dict[str, Any]) -> Any:
    """Serve application builder: ``import_path: servectl.runtime.application:build``."""
    return serve.deployment(name=args["backend"])(replica_class(args)).bind()
