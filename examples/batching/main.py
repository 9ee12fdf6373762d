"""The seed's "Batching to Improve Performance": up to max_batch_size requests per call.

    servectl -C examples/batching apply
    servectl -C examples/batching plan --var max_batch_size=10    # ~ in place, no restart
"""
from servectl import Backend, Endpoint, LocalRay, var

LocalRay()

max_batch_size = var("max_batch_size", default=5)

counter = Backend(
    "counter1", "models:BatchingExample",
    max_batch_size=max_batch_size, batch_wait_timeout_s=0.05, ray_actor_options={"num_cpus": 0.25},
)
Endpoint("counter1", route="/increment", backend=counter)
