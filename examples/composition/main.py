"""model_one → maybe model_two, composed behind /composed.

    curl -d 'hey!' localhost:8000/composed     # {"model_used": 2, "score": 0.62…}
"""
from servectl import Backend, Endpoint, LocalRay

LocalRay()

small = {"num_cpus": 0.25}
model_one = Backend("model_one", "models:model_one", ray_actor_options=small)
Endpoint("model_one", backend=model_one)  # no route: reachable by handle only

model_two = Backend("model_two", "models:model_two", ray_actor_options=small)
Endpoint("model_two", backend=model_two)

# max_concurrent_queries bounds in-flight requests per replica, as in the seed.
composed = Backend("composed_backend", "models:ComposedModel", max_concurrent_queries=10, ray_actor_options=small)
Endpoint("composed", route="/composed", backend=composed)
