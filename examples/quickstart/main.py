"""Quick start: one backend behind /hello on an embedded local Ray cluster."""
from servectl import Backend, Endpoint, LocalRay

LocalRay()  # embedded Ray; HTTP on 127.0.0.1:8000

hello = Backend("hello", "models:Hello", "Hello from servectl", ray_actor_options={"num_cpus": 0.25})
Endpoint("hello", route="/hello", backend=hello)
