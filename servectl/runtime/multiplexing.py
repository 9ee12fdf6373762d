"""Model multiplexing inside a replica: the backend's ``max_models_per_replica`` on the class's own loader.

Ray Serve fixes ``max_num_models_per_replica`` where the user's code says
``@serve.multiplexed(...)``; servectl makes it a backend setting that moves
in place. Serve creates the loader's least-recently-used cache on the first
call and keeps it on the instance; servectl creates it first, with the
backend's limit, and sets the limit again on every ``reconfigure``.
"""
from __future__ import annotations

import inspect
from typing import Any, Optional

# Where Serve's @serve.multiplexed keeps an instance's model cache, and how it marks a loader (Ray 2.60).
_CACHE_ATTRIBUTE = "__serve_multiplex_wrapper"
_LOADER_MARKER = "_serve_multiplexed_function"


def loader_of(instance: Any) -> Optional[Any]:
    """The ``@serve.multiplexed`` method as written (the undecorated function) of ``instance`` — or of the class
    itself, when given a class — or None if it has none."""
    for klass in (instance if isinstance(instance, type) else type(instance)).__mro__:
        for attribute in vars(klass).values():
            try:
                marked = inspect.getattr_static(attribute, _LOADER_MARKER, False) is True
            except Exception:  # noqa: BLE001 - an attribute that refuses inspection is no loader
                marked = False
            if marked:
                return getattr(attribute, "__wrapped__", None)
    return None


def limit_models(instance: Any, limit: Optional[int]) -> bool:
    """Make ``instance``'s multiplexed loader keep at most ``limit`` models (least recently used unloaded first).

    Returns whether the instance has a loader; ``limit`` None leaves Serve's own (the decorator's) in force.
    Call it inside a replica, on its event loop (from a request, as Serve's own first loader call does): Serve's
    cache starts a task there that reports the model ids it holds to the controller, which routes requests for
    an id to the replicas holding it.
    """
    if instance is None or limit is None:
        return False
    loader = loader_of(instance)
    if loader is None:
        return False
    cache = getattr(instance, _CACHE_ATTRIBUTE, None)
    if cache is None:
        from ray.serve.multiplex import _ModelMultiplexWrapper

        cache = _ModelMultiplexWrapper(loader, instance, int(limit))
        setattr(instance, _CACHE_ATTRIBUTE, cache)
    cache.max_num_models_per_replica = int(limit)
    return True


class ModelLimit:
    """A replica's ``max_models_per_replica``: set by ``reconfigure`` (any thread), put in force by ``apply`` on
    the replica's event loop before each request (a no-op once in force)."""

    def __init__(self, instance: Any) -> None:
        self.instance = instance
        self.wanted: Optional[int] = None
        self.applied: Optional[int] = None

    def want(self, limit: Any) -> None:
        """Record the backend's limit (None: Serve's own) for the next ``apply``."""
        self.wanted = int(limit) if limit is not None else None

    def apply(self) -> None:
        """Put the recorded limit in force if it is not yet (see ``limit_models``)."""
        if self.wanted != self.applied and self.wanted is not None:
            limit_models(self.instance, self.wanted)
            self.applied = self.wanted
