"""Property tests over the config language and the planner (hypothesis).

Configs are generated as main.py source and loaded by the real loader, so the
config model is fuzzed with the planner: any mix of backends (replicas or
autoscaling, CPU/GPU shares, user_config, batching), endpoints (routes,
weights, shadows) and variables.

- Convergence: for any two configs A and B, applying plan(A, nothing) and
  then plan(B, that state) gives a state whose plan against B is empty.
- Failure: loading and planning raise nothing but servectl's own error type
  (one line, for the user), whatever the config says.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servectl.engine.apply import _after_change
from servectl.errors import ServectlError
from servectl.loading.loader import load_config
from servectl.model.capacity import NodeCapacity
from servectl.planning.planner import plan_changes
from servectl.state.document import StateDocument

NAMES = ("alpha", "beta", "gamma", "delta")
ROUTES = ("/a", "/b", "/c", "/a/b", "/", None)
BIG = [NodeCapacity("big", cpus=256, gpus=64)]  # room for any generated config: only the mistakes fail
MODELS = "class M:\n    def __call__(self, request):\n        return 'ok'\n"
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])


@st.composite
def backends(draw) -> list[str]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True))
    lines = []
    for name in names:
        settings_ = {"ray_actor_options": {"num_cpus": draw(st.sampled_from([0.1, 0.25, 0.5, 1])),
                                           "num_gpus": draw(st.sampled_from([0, 0.25, 0.5, 1]))}}
        if draw(st.booleans()):
            low = draw(st.integers(0, 3))
            settings_["autoscaling"] = {"min_replicas": low, "max_replicas": low + draw(st.integers(1, 4)),
                                        "target_ongoing_requests": draw(st.sampled_from([1, 2.5, 8]))}
        else:
            settings_["num_replicas"] = draw(st.integers(0, 4))
        if draw(st.booleans()):
            settings_["user_config"] = {"threshold": draw(st.floats(0, 1, allow_nan=False)),
                                        "label": draw(st.text("abc", max_size=3))}
        if draw(st.booleans()):
            settings_["max_batch_size"] = draw(st.integers(1, 16))
        settings_["max_concurrent_queries"] = draw(st.integers(settings_.get("max_batch_size", 1), 100))
        lines.append(f"{name} = Backend({name!r}, 'models:M', **{settings_!r})")
    return lines


@st.composite
def configs(draw) -> str:
    lines = ["from servectl import Backend, Endpoint, LocalRay", "LocalRay(num_gpus=8, num_cpus=64)"]
    declared = draw(backends())
    lines += declared
    names = [line.split(" = ")[0] for line in declared]
    routes = draw(st.lists(st.sampled_from(ROUTES), max_size=3, unique=True))
    for index, route in enumerate(routes):
        chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True))
        parts = draw(st.lists(st.integers(0, 10), min_size=len(chosen), max_size=len(chosen)))
        if sum(parts) == 0:
            parts[0] = 1
        total = sum(parts)
        weights = {n: p / total for n, p in zip(chosen, parts)}
        weights[chosen[0]] += 1.0 - sum(weights.values())  # exact sum, as a user would write it
        traffic = "{" + ", ".join(f"{n}: {w!r}" for n, w in weights.items()) + "}"
        shadow = ""
        spare = [n for n in names if n not in chosen]
        if spare and draw(st.booleans()):
            shadow = f", shadow={{{spare[0]}: {draw(st.sampled_from([0.1, 0.5, 1.0]))!r}}}"
        lines.append(f"Endpoint('ep{index}', route={route!r}, traffic={traffic}{shadow})")
    return "\n".join(lines) + "\n"


def _load(directory: Path, source: str):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "main.py").write_text(source)
    (directory / "models.py").write_text(MODELS)
    return load_config(str(directory))


def _applied(plan, state):
    """The state apply records after carrying out every change of ``plan``."""
    document = state.copy() if state else StateDocument.new()
    for change in plan.actionable:
        document.resources = _after_change(document.resources, change)
    document.provider = dict(plan.provider)
    return document


@FUZZ
@given(first=configs(), second=configs())
def test_applying_a_plan_leaves_nothing_to_plan(tmp_path_factory, first, second):
    root = tmp_path_factory.mktemp("fuzz")
    state = None
    for source in (first, second):
        desired = _load(root, source)
        state = _applied(plan_changes(desired, state, BIG), state)
        again = plan_changes(desired, state, BIG)
        assert not again.has_changes(), (source, [(c.address, c.action, c.reasons) for c in again.actionable])


# Fragments a user might get wrong, spliced into a valid config at random.
MISTAKES = [
    "Backend('alpha', 'models:M')", "Backend('x', 'models:M', num_replicas=-1)", "Backend('x', 'models:M', num_replicas='2')",
    "Backend('x', 'models:Nope')", "Backend('x', 'nomodule:M')", "Backend('x', 'models:M', ray_actor_options={'num_gpus': 3.5})",
    "Backend('x', 'models:M', ray_actor_options={'num_cpus': -1})", "Backend('x', 'models:M', autoscaling={'max_replicas': 0})",
    "Backend('x y', 'models:M')", "Backend('x', 42)", "Backend('x', 'models:M', user_config=object())",
    "Endpoint('e', route='/a', traffic={})", "Endpoint('e', route='/a', traffic={'alpha': 2})",
    "Endpoint('e', route='a', backend='alpha')", "Endpoint('e', backend=None)", "Endpoint('e', route='/a', traffic=[1])",
    "Endpoint('e', route='/a', backend='alpha', traffic={'alpha': 1})", "Endpoint('ep0', route='/zz', backend='alpha')",
    "LocalRay()", "LocalRay(num_gpus=-1)", "LocalRay(http_port=70000)", "var('v')", "var('v', default=1)\nvar('v', default=2)",
    "Backend('x', 'models:M', max_batch_size=0)", "Backend('x', 'models:M', batch_wait_timeout_s=-1)",
    "Backend('x', 'models:M', pip=['not a requirement!'])", "Backend('x', 'models:M', env_vars={'A': 1})",
    "Endpoint('e', route='/a', traffic={'alpha': float('nan')})", "raise RuntimeError('boom')", "1/0", "(",
    "Backend('x', 'models:M', num_replicas=10**12)", "Backend('x', 'models:M', max_batch_size=64, max_concurrent_queries=8)",
    "Backend('x', 'models:M', ray_actor_options={'num_cpus': float('inf')})", "Backend('x\\n', 'models:M')",
    "Endpoint('e', route='/a\\n', backend='alpha')", "LocalRay(num_cpus=float('nan'))",
]


@FUZZ
@given(base=configs(), mistake=st.sampled_from(MISTAKES), at=st.integers(0, 50))
def test_nothing_but_servectl_errors_escape_the_loader_and_planner(tmp_path_factory, base, mistake, at):
    lines = base.splitlines()
    position = min(at, len(lines))
    lines.insert(max(2, position), textwrap.dedent(mistake))
    source = "from servectl import var\n" + "\n".join(lines) + "\n"
    root = tmp_path_factory.mktemp("fuzzbad")
    try:
        desired = _load(root, source)
        plan_changes(desired, None, BIG)
        plan_changes(desired, None, [NodeCapacity("tiny", cpus=0.5, gpus=0)])
    except ServectlError as err:
        assert "\n" not in str(err) and str(err), repr(err)
