"""Timeouts and backpressure: a slow request gets 504 within its bound, a full queue 503 at once, with Retry-After.

    servectl -C examples/timeouts apply --auto-approve
    curl -i 'localhost:8000/slow?delay=5'      # 504 after 1 s; the replica keeps serving
    curl -i 'localhost:8000/slow?delay=0.1'    # 200

Each setting changes in place (the plan says so): `--var timeout_s=3`.
"""
from servectl import Backend, Endpoint, LocalRay, var

LocalRay()
slow = Backend(
    "slow", "models:Slow", ray_actor_options={"num_cpus": 0.25},
    max_concurrent_queries=1,  # one request at a time per replica …
    max_queued_requests=var("queue", default=2),  # … two waiting; the rest are refused with 503 at once
    request_timeout_s=var("timeout_s", default=1.0),  # HTTP: 504 past it
    graceful_shutdown_timeout_s=5.0, health_check_period_s=2.0, health_check_timeout_s=10.0,
)
Endpoint("slow", route="/slow", backend=slow)
