"""The seed's "Fractional GPUs": two backends of half a GPU each share one GPU.

`servectl plan` packs both replicas onto the same GPU and says so ("GPU 0:
vision_a 0.5 + vision_b 0.5"); Ray then gives both replicas the same
CUDA_VISIBLE_DEVICES. The local cluster needs GPUs for this:
`LocalRay(num_gpus=1)` declares one (logical on a machine without one).
"""
from servectl import Backend, Endpoint, LocalRay

LocalRay(num_gpus=1)

half = {"num_cpus": 0.25, "num_gpus": 0.5}
vision_a = Backend("vision_a", "models:GpuReport", ray_actor_options=half)
vision_b = Backend("vision_b", "models:GpuReport", ray_actor_options=half)
Endpoint("vision_a", route="/vision_a", backend=vision_a)
Endpoint("vision_b", route="/vision_b", backend=vision_b)
