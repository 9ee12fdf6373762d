"""Sync and async handles from a driver script: see client.py beside this file."""
from servectl import Backend, Endpoint, LocalRay

LocalRay()

echo = Backend("echo", "models:Echo", ray_actor_options={"num_cpus": 0.25})
Endpoint("echo", route="/echo", backend=echo)
