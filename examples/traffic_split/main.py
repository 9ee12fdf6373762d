"""The seed's "Splitting Traffic Between Backends": /fifty served half by each backend."""
from servectl import Backend, Endpoint, LocalRay

LocalRay()

backend1 = Backend("backend1", "models:Named", "backend1", ray_actor_options={"num_cpus": 0.25})
backend2 = Backend("backend2", "models:Named", "backend2", ray_actor_options={"num_cpus": 0.25})
Endpoint("fifty-fifty", route="/fifty", traffic={backend1: 0.5, backend2: 0.5})
