"""The seed's "Incremental Rollout": raise new_backend's share step by step, or go back.

    servectl -C examples/incremental_rollout apply --var new_share=0.1
    servectl -C examples/incremental_rollout apply --var new_share=0.5
    servectl -C examples/incremental_rollout apply --var new_share=1.0
    servectl -C examples/incremental_rollout apply --var new_share=0     # roll back
"""
from servectl import Backend, Endpoint, LocalRay, var

LocalRay()

new_share = var("new_share", default=0.0, description="share of /incremental served by new_backend")

existing = Backend("existing_backend", "models:Named", "existing_backend", ray_actor_options={"num_cpus": 0.25})
new = Backend("new_backend", "models:Named", "new_backend", ray_actor_options={"num_cpus": 0.25})
Endpoint("incremental_endpoint", route="/incremental", traffic={existing: 1 - new_share, new: new_share})
