"""A backend that serves many models: Ray Serve's @serve.multiplexed loads one by id, on the replica that needs it."""
import os

from ray import serve


class Adapters:
    def __init__(self, name: str) -> None:
        self.name = name
        self.loads = 0

    @serve.multiplexed(max_num_models_per_replica=8)  # servectl's max_models_per_replica sets the limit in force
    async def load(self, model_id: str) -> dict:
        self.loads += 1  # a real backend reads weights from disk or S3 here
        return {"model": model_id, "backend": self.name}

    async def __call__(self, request) -> dict:
        model = await self.load(serve.get_multiplexed_model_id() or "default")  # a request that names no model
        return {**model, "replica": os.getpid(), "loads": self.loads}
