"""Runtime: what runs inside Serve replicas, and the handles drivers and backends call endpoints with.

``application`` builds each backend's Serve application (the route proof
check, sealed arguments opened, batching, ``reconfigure``); ``handles``
routes a call by its endpoint's policy on the caller's side; ``sealed`` and
``proof`` are the secrets both sides share; ``headers``, ``request`` and
``context`` the request shapes. It imports only the foundation and
``servectl.routing``: a replica never loads the planner or a provider.
"""
