"""Streaming answers: chunks reach the client as the backend yields them, through every hop, never buffered.

    servectl -C examples/streaming apply --auto-approve
    curl -N 'localhost:8000/count?n=5&delay=0.5'    # "0\n", "1\n", … one every half second
    curl -N 'localhost:8000/events/ticks?n=3'       # server-sent events from a FastAPI StreamingResponse

From a driver, `servectl.get_handle("count").options(stream=True).remote(n=5)`
gives the chunks as an iterator (`async for` on an async handle), and
`get_handle("events").options(stream=True, path="/ticks").remote(n=3)` the app's
events as it sends them (bytes).
"""
from servectl import Backend, Endpoint, LocalRay

LocalRay()
small = {"num_cpus": 0.25}
Endpoint("count", route="/count", backend=Backend("counter", "models:Counter", ray_actor_options=small))
Endpoint("events", route="/events", backend=Backend("events", "models:Events", ray_actor_options=small))
