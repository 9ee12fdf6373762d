"""The seed's "Shadow Testing": /shadow is served by existing_backend alone, while
half of its requests are also copied to new_backend_1 and a tenth to new_backend_2.

Callers see only existing_backend's answers and latency; the copies are counted
in the metrics (ray_servectl_requests{role="shadow"}). Set a proportion to 0
(or remove it) to stop shadowing.
"""
from servectl import Backend, Endpoint, LocalRay, var

LocalRay()

share_1 = var("shadow_1", default=0.5)
share_2 = var("shadow_2", default=0.1)
small = {"num_cpus": 0.25}

existing = Backend("existing_backend", "models:Named", "existing_backend", ray_actor_options=small)
new_1 = Backend("new_backend_1", "models:Named", "new_backend_1", ray_actor_options=small)
new_2 = Backend("new_backend_2", "models:Named", "new_backend_2", ray_actor_options=small)
Endpoint("shadowed_endpoint", route="/shadow", backend=existing, shadow={new_1: share_1, new_2: share_2})
