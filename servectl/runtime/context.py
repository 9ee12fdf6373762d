"""Where backend code is running: the seed's ``serve.get_current_backend_tag()`` for custom metrics."""
from __future__ import annotations


def _replica_context():  # type: ignore[no-untyped-def]
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        return serve.get_replica_context()
    except RayServeException:
        raise RuntimeError("this works only inside a backend's replica (in __init__ or __call__)") from None


def get_current_backend_tag() -> str:
    """The name of the backend this code runs in: tag custom metrics with it (``{"backend": …}``).

    Each backend is one Serve application of the same name, so Ray Serve's own
    series carry it as ``deployment`` and ``application``.
    """
    return _replica_context().app_name


def get_current_replica_tag() -> str:
    """This replica's unique id (Ray Serve's ``replica`` label)."""
    return _replica_context().replica_id.unique_id
