"""HTTP headers servectl's front proxy, handles and replicas use to talk to each other.

Clients cannot set these: the front proxy strips them from every request.
"""
SHADOW_HEADER = "x-servectl-shadow"  # backends that get a copy of this request
MIRRORED_HEADER = "x-servectl-mirrored"  # shadow backends the front proxy itself copied this request to
BACKEND_HEADER = "x-servectl-backend"  # the backend the front proxy chose (on the copies: the shadow's)
ROLE_HEADER = "x-servectl-role"  # "shadow" on the copies
ENDPOINT_HEADER = "x-servectl-endpoint"  # the endpoint the request came in on
SHARD_KEY_HEADER = "x-serve-shard-key"  # the seed's session-affinity header (set by clients)
PROOF_HEADER = "x-servectl-proof"  # set by the front proxy on what an endpoint routed (see servectl.runtime.proof)
ROUTE_HEADER = "x-servectl-route"  # the endpoint's public route, for an ingress app's root_path (front proxy)
MODEL_ID_HEADER = "serve_multiplexed_model_id"  # Ray Serve's: the model a multiplexed request is for (clients)
