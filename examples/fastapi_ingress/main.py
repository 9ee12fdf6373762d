"""A FastAPI app as a backend, as Ray Serve's `@serve.ingress(app)`: the endpoint's route is the app's prefix.

    servectl -C examples/fastapi_ingress apply --auto-approve
    curl -s localhost:8000/api/items/7?q=x        # {"item_id":7,"q":"x","version":"v1"}
    curl -s -X POST localhost:8000/api/items -H 'content-type: application/json' -d '{"name":"a","price":2}'
    curl -s localhost:8000/api/items/not-a-number # 422, FastAPI's validation error
    open http://localhost:8000/api/docs           # the app's OpenAPI docs, at its public URL

`--var v2_share=0.5` splits /api between two versions of the app (every path
under it; `x-serve-shard-key` keeps a user on one); `--var shadow=0.1` copies a
tenth of the requests to the v2 app as well. `ws://localhost:8000/api/ws` echoes
with the version: a weight change leaves an open WebSocket on its version until
it closes (at most `--var drain_s=…` seconds, 300 by default).
"""
from servectl import Backend, Endpoint, LocalRay, var

LocalRay()
small = {"num_cpus": 0.25}
v1 = Backend("api_v1", "models:ItemsApi", "v1", ray_actor_options=small)
v2 = Backend("api_v2", "models:ItemsApi", "v2", ray_actor_options=small)
share = var("v2_share", default=0.0)
drain = var("drain_s", default=300.0)  # every endpoint's: the front proxy keeps the longest
Endpoint("api", route="/api", traffic={v1: 1 - share, v2: share}, shadow={v2: var("shadow", default=0.0)},
         deregistration_delay_s=drain)
# A plain ASGI app (no class) is a backend too.
Endpoint("health", route="/health-app", backend=Backend("health_app", "models:health_app", ray_actor_options=small),
         deregistration_delay_s=drain)
