"""The seed's "Composing Multiple Models", on servectl handles."""
from random import random

import servectl


def model_one(request):
    print("Model 1 called with data ", request.query_params.get("data"))
    return random()


def model_two(request):
    print("Model 2 called with data ", request.query_params.get("data"))
    return request.query_params.get("data")


class ComposedModel:
    def __init__(self):
        # Handles to *endpoints*: each call follows that endpoint's traffic policy.
        self.model_one = servectl.get_handle("model_one", sync=False)
        self.model_two = servectl.get_handle("model_two", sync=False)

    # This method can be called concurrently!
    async def __call__(self, starlette_request):
        data = await starlette_request.body()

        score = await self.model_one.remote(data=data)
        if score > 0.5:
            await self.model_two.remote(data=data)
            result = {"model_used": 2, "score": score}
        else:
            result = {"model_used": 1, "score": score}

        return result
