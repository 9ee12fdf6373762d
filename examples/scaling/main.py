"""The seed's "Scaling Out": one backend whose replica count is a variable.

    servectl -C examples/scaling apply                      # 10 replicas
    servectl -C examples/scaling plan --var replicas=2      # ~ num_replicas 10 → 2, in place
"""
import os

from servectl import Backend, Endpoint, LocalRay, var

LocalRay()

replicas = var("replicas", default=10, description="how many replicas serve /scaled")


def handle_request(request):
    # Each replica answers with its own PID, so a client can see the replicas.
    return {"pid": os.getpid()}


scaled = Backend(
    "my_scaled_endpoint_backend",
    handle_request,
    num_replicas=replicas,
    ray_actor_options={"num_cpus": 0.1},  # ten replicas fit on two cores
)
Endpoint("scaled", route="/scaled", backend=scaled)
