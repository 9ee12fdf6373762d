"""Progressive delivery: `api` moves from model_v1 to model_v2 in steps, each watched by the gates.

    servectl -C examples/progressive_rollout apply          # creates both, then runs the rollout
    servectl -C examples/progressive_rollout rollout --json # the same, for CI: JSON out, exit 1 if aborted

Try a bad candidate: `--var fail_ratio=0.2` (errors) or `--var delay_ms=400` (slow).
`--var p99_vs_stable=…` sets how much slower than the stable backend's p99 the candidate's may be (1.5×).
"""
from servectl import Backend, Endpoint, ErrorRate, LatencyP99, LocalRay, MinRequests, Rollout, var

LocalRay()
small = {"num_cpus": 0.1}
stable = Backend("model_v1", "models:Model", "v1", ray_actor_options=small)
candidate = Backend(
    "model_v2", "models:Model", var("candidate", default="v2"), ray_actor_options=small,
    init_kwargs={"fail_ratio": var("fail_ratio", default=0.0), "delay_ms": var("delay_ms", default=0)},
)
api = Endpoint("api", route="/api", backend=stable)
Rollout(
    endpoint=api,
    new=candidate,
    steps=[0.1, 0.5, 1.0],
    pause_s=var("pause_s", default=10.0),
    analysis=[
        ErrorRate(max=0.01),
        LatencyP99(max_ms=var("p99_max_ms", default=250), vs_stable=var("p99_vs_stable", default=1.5)),
        MinRequests(var("min_requests", default=20)),
    ],
    on_failure=var("on_failure", default="rollback"),
)
