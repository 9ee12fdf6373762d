"""The issue's AWS example: the same backends and endpoints as anywhere, on an autoscaled EC2 cluster.

`servectl -C examples/aws plan` shows every AWS resource and the node groups the replicas need.
Prices are on-demand us-east-1 USD per hour, for the plan's cost lines.
"""
from servectl import AwsRay, Backend, Endpoint, LoadBalancer, NodeType, var

AwsRay(
    region="us-east-1",
    head=NodeType("head", instance_type="m6i.large", resources={"CPU": 2}, hourly_price=0.096),
    node_types=[
        NodeType("cpu", instance_type="m6i.xlarge", resources={"CPU": 4}, min_workers=1, max_workers=10,
                 hourly_price=0.192),
        NodeType("gpu", instance_type="g5.xlarge", resources={"CPU": 4, "GPU": 1}, min_workers=0, max_workers=8,
                 hourly_price=1.006),
    ],
    load_balancer=LoadBalancer(port=80, allowed_cidrs=[var("allowed_cidr", default="203.0.113.0/24")]),
)

vision = Backend(
    "vision", "models:Vision", num_replicas=var("vision_replicas", default=2),
    ray_actor_options={"num_cpus": 1, "num_gpus": 0.5},
)
text = Backend(
    "text", "models:Text", ray_actor_options={"num_cpus": 1},
    autoscaling={"min_replicas": 2, "max_replicas": 12, "target_ongoing_requests": 4},
)
Endpoint("vision", route="/vision", backend=vision)
Endpoint("text", route="/text", backend=text)
