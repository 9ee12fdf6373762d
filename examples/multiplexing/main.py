"""Model multiplexing with per-model traffic: many models behind one endpoint, one model id moved on its own.

    servectl -C examples/multiplexing apply --auto-approve
    curl -H 'serve_multiplexed_model_id: adapter-1' localhost:8000/llm    # {"model": "adapter-1", "backend": "base", ...}
    curl -H 'serve_multiplexed_model_id: adapter-7' localhost:8000/llm    # {"model": "adapter-7", "backend": "tuned", ...}

Each replica keeps at most `max_models_per_replica` models loaded (least recently used unloaded first), and Serve
sends a model id to the replicas that already hold it. `models=` sends one model id to another backend: every
other id stays on `base`. Move adapter-7 step by step with `--var adapter7_tuned=0.1` (the plan shows
`model adapter-7: tuned 1 → base 0.9, tuned 0.1`), or hand one model id over gated by its error rate:

    servectl -C examples/multiplexing rollout --auto-approve --var roll_out=adapter-9
"""
from servectl import Backend, Endpoint, ErrorRate, LocalRay, Rollout, var

LocalRay()
small = {"num_cpus": 0.25}
base = Backend("base", "models:Adapters", "base", num_replicas=2, max_models_per_replica=2, ray_actor_options=small)
tuned = Backend("tuned", "models:Adapters", "tuned", max_models_per_replica=var("tuned_models", default=2),
                ray_actor_options=small)
share = var("adapter7_tuned", default=1.0)
llm = Endpoint("llm", route="/llm", backend=base,
               models={"adapter-7": {tuned: share, base: 1.0 - share} if share < 1.0 else tuned})
roll_out = var("roll_out", default="")
if roll_out:  # one model id moves base → tuned in steps; every other id stays
    Rollout(endpoint=llm, new=tuned, model=roll_out, steps=[0.5, 1.0],
            pause_s=var("pause_s", default=20.0), analysis=[ErrorRate(max=0.05)])
