"""The seed's "Reconfiguring Backends": change a live parameter without restarting replicas.

    servectl -C examples/reconfigure apply --var threshold=0.01   # /threshold → true, probably
    servectl -C examples/reconfigure plan --var threshold=0.99    # ~ user_config, in place
"""
from servectl import Backend, Endpoint, LocalRay, var

LocalRay()

threshold = var("threshold", default=0.01)
replicas = var("replicas", default=1)

backend = Backend(
    "threshold", "models:Threshold",
    user_config={"threshold": threshold}, num_replicas=replicas, ray_actor_options={"num_cpus": 0.25},
)
Endpoint("threshold", route="/threshold", backend=backend)
