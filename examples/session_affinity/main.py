"""The seed's "Session Affinity": a shard key always reaches the same backend.

    curl -H "X-SERVE-SHARD-KEY: session-42" localhost:8000/affinity    # same backend every time

Changing the weights (--var a_share=0.8) moves only keys of the backend whose
share shrank; every other key stays where it was.
"""
from servectl import Backend, Endpoint, LocalRay, var

LocalRay()

a_share = var("a_share", default=0.5, description="share of keys on backend_a")

backend_a = Backend("backend_a", "models:Named", "backend_a", ray_actor_options={"num_cpus": 0.25})
backend_b = Backend("backend_b", "models:Named", "backend_b", ray_actor_options={"num_cpus": 0.25})
Endpoint("affinity", route="/affinity", traffic={backend_a: a_share, backend_b: 1 - a_share})
