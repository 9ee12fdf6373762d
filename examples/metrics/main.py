"""The seed's "Monitoring": Ray Serve's metrics per backend, servectl's own, and a custom one.

After apply, the head node's Prometheus endpoint (`--metrics-export-port`; the
embedded cluster records it in .servectl/cluster.json as metrics_port) shows:
ray_serve_deployment_request_counter_total{deployment="excellent"},
ray_servectl_requests_total{endpoint="excellent",backend="excellent"},
ray_servectl_queuing_latency_ms_*{backend="excellent"} and the custom
ray_excellent_requests_total{backend="excellent"}. `servectl status` reads them.
"""
from servectl import Backend, Endpoint, LocalRay

LocalRay()

backend = Backend("excellent", "models:MyBackendClass", num_replicas=2, ray_actor_options={"num_cpus": 0.25})
Endpoint("excellent", route="/excellent", backend=backend)
