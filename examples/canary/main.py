"""The seed's "Canary Deployments": a small share of /canary-test goes to new_backend.

    servectl -C examples/canary apply --var canary=0.01    # 99 % default, 1 % new
    servectl -C examples/canary plan --var canary=0.1      # ~ traffic 0.99/0.01 → 0.9/0.1, in place
    servectl -C examples/canary apply --var canary=0       # back to the default backend only
"""
from servectl import Backend, Endpoint, LocalRay, var

LocalRay()

canary = var("canary", default=0.01, description="share of traffic for new_backend")

default_backend = Backend("default_backend", "models:Named", "default_backend", ray_actor_options={"num_cpus": 0.25})
new_backend = Backend("new_backend", "models:Named", "new_backend", ray_actor_options={"num_cpus": 0.25})
Endpoint("canary_endpoint", route="/canary-test", traffic={default_backend: 1 - canary, new_backend: canary})
