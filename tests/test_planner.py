"""Planner and placement: action classification, reasons, apply order, packing."""
from __future__ import annotations

import pytest

from servectl.model.desired import BACKEND, ENDPOINT, DesiredState, ProviderSpec, ResourceSpec
from servectl.errors import PlanError
from servectl.model.capacity import NodeCapacity
from servectl.planning.placement import ReplicaDemand, pack
from servectl.model.plan import Action
from servectl.planning.planner import plan_changes
from servectl.state.document import FAILED, ResourceState, StateDocument

PROVIDER = ProviderSpec("local_ray", None, "127.0.0.1", 8000, "HeadOnly", 4, 0, {}, None)
NODES = [NodeCapacity("head", cpus=4, gpus=2)]


def backend(name: str, replicas: int = 1, sha: str = "a" * 64, cpus: float = 1.0, gpus: float = 0.0, user_config=None):
    return ResourceSpec(BACKEND, name, {
        "code": {"import_path": "m:C", "sha256": sha, "origin": "m.py"},
        "init_args": [], "init_kwargs": {}, "num_replicas": replicas,
        "ray_actor_options": {"num_cpus": cpus, "num_gpus": gpus, "memory": None, "resources": {}},
        "max_concurrent_queries": 100, "user_config": user_config,
    }, declared_at="main.py:1")


def endpoint(name: str, route: str, target: str):
    return ResourceSpec(ENDPOINT, name, {"route": route, "traffic": {target: 1.0}}, [f"backend.{target}"], "main.py:2")


def desired(*specs: ResourceSpec) -> DesiredState:
    return DesiredState("/cfg", PROVIDER, {s.address: s for s in specs}, {})


def state_of(*specs: ResourceSpec) -> StateDocument:
    doc = StateDocument.new()
    doc.provider = PROVIDER.attributes()
    for s in specs:
        doc.resources[s.address] = ResourceState(s.kind, s.name, s.attributes)
    return doc


def actions(plan):
    return {c.address: c.action for c in plan.changes}


def test_everything_new_is_created_backends_before_endpoints():
    plan = plan_changes(desired(endpoint("e", "/e", "b"), backend("b")), None, NODES)
    assert [(c.address, c.action) for c in plan.changes] == [("backend.b", Action.CREATE), ("endpoint.e", Action.CREATE)]
    assert plan.replicas_after == 1 and plan.replica_delta == 1


def test_unchanged_is_noop_and_plan_has_no_changes():
    specs = (backend("b"), endpoint("e", "/e", "b"))
    plan = plan_changes(desired(*specs), state_of(*specs), NODES)
    assert not plan.has_changes()
    assert set(actions(plan).values()) == {Action.NOOP}


@pytest.mark.parametrize(
    "after, action, reason",
    [
        (backend("b", replicas=4), Action.UPDATE, "num_replicas 1 → 4"),
        (backend("b", user_config={"t": 2}), Action.UPDATE, "user_config changed"),
        (backend("b", sha="b" * 64), Action.REPLACE, "code changed (sha256 aaaaaaaaaaaa → bbbbbbbbbbbb)"),
        (backend("b", cpus=0.5), Action.REPLACE, "ray_actor_options.num_cpus 1.0 → 0.5 (replicas restart)"),
    ],
)
def test_backend_changes_are_classified_by_their_cost_on_serve(after, action, reason):
    plan = plan_changes(desired(after), state_of(backend("b")), NODES)
    change = plan.changes[0]
    assert change.action is action
    assert any(reason in r for r in change.reasons), change.reasons


def test_route_change_is_in_place():
    plan = plan_changes(desired(backend("b"), endpoint("e", "/new", "b")), state_of(backend("b"), endpoint("e", "/old", "b")), NODES)
    assert actions(plan)["endpoint.e"] is Action.UPDATE


def test_removed_resources_are_deleted_after_routes_move():
    before = state_of(backend("old"), endpoint("e", "/e", "old"))
    plan = plan_changes(desired(backend("new"), endpoint("e", "/e", "new")), before, NODES)
    order = [(c.address, c.action) for c in plan.actionable]
    assert order == [("backend.new", Action.CREATE), ("endpoint.e", Action.UPDATE), ("backend.old", Action.DELETE)]


def test_destroy_deletes_everything_recorded():
    specs = (backend("b"), endpoint("e", "/e", "b"))
    plan = plan_changes(desired(*specs), state_of(*specs), NODES, destroy=True)
    assert [(c.address, c.action) for c in plan.actionable] == [("endpoint.e", Action.DELETE), ("backend.b", Action.DELETE)]


def test_failed_resource_is_planned_again():
    doc = state_of(backend("b"))
    doc.resources["backend.b"].status = FAILED
    doc.resources["backend.b"].error = "constructor raised"
    plan = plan_changes(desired(backend("b")), doc, NODES)
    assert plan.changes[0].action is Action.REPLACE
    assert "last apply failed: constructor raised" in plan.changes[0].reasons


def test_an_interrupted_in_place_change_is_retried_in_place():
    from servectl.state.document import APPLYING

    doc = state_of(backend("b", replicas=1))
    doc.resources["backend.b"].status = APPLYING
    doc.resources["backend.b"].live = {"application": "b"}
    retried = plan_changes(desired(backend("b", replicas=2)), doc, NODES).changes[0]
    assert retried.action is Action.UPDATE  # the replicas may already run it: nothing to restart
    assert retried.reasons[0] == "the last apply stopped before this change finished"
    recode = plan_changes(desired(backend("b", replicas=2, sha="b" * 64)), doc, NODES).changes[0]
    assert recode.action is Action.REPLACE


def test_unplaceable_gpu_backend_fails_at_plan_time_naming_need_and_supply():
    with pytest.raises(PlanError) as raised:
        plan_changes(desired(backend("gpu", gpus=1)), None, [NodeCapacity("head", cpus=4, gpus=0)])
    assert "backend.gpu: 1 of 1 replica needing {CPU 1, GPU 1} each cannot be placed on the cluster (1 node: CPU 4, GPU 0" in str(raised.value)


def test_http_port_change_with_live_resources_is_refused():
    state = state_of(backend("b"))
    moved = ProviderSpec("local_ray", None, "127.0.0.1", 9000, "HeadOnly", 4, 0, {}, None)
    with pytest.raises(PlanError, match="provider http_port changed"):
        plan_changes(DesiredState("/cfg", moved, {"backend.b": backend("b")}, {}), state, NODES)


def test_fractional_gpus_share_one_gpu():
    placement = pack([(ReplicaDemand("a", 0.1, 0.5), 1), (ReplicaDemand("b", 0.1, 0.5), 1)], [NodeCapacity("n", 4, 2)])
    assert not placement.unplaced
    assert placement.nodes[0].gpu_slots_used == [1.0, 0.0]
    assert placement.nodes[0].gpu_shares == [{"a": 0.5, "b": 0.5}, {}]


def test_fraction_cannot_straddle_two_gpus():
    placement = pack([(ReplicaDemand("a", 0, 0.6), 3)], [NodeCapacity("n", 4, 2)])
    assert placement.unplaced and placement.unplaced[0][1] == 1


def test_ten_tenth_cpu_replicas_fit_one_cpu_exactly():
    placement = pack([(ReplicaDemand("a", 0.1, 0), 10)], [NodeCapacity("n", 1, 0)])
    assert not placement.unplaced and placement.replicas == 10


def test_custom_resources_and_memory_are_checked():
    nodes = [NodeCapacity("n", 4, 0, memory=2 * 2**30, resources={"tpu": 1})]
    placement = pack([(ReplicaDemand("a", 0, 0, memory=3 * 2**30), 1), (ReplicaDemand("b", 0, 0, resources={"tpu": 2}), 1)], nodes)
    assert sorted(d.backend for d, _ in placement.unplaced) == ["a", "b"]


def test_attribute_added_by_a_newer_servectl_at_its_default_is_no_change():
    recorded = backend("b")
    now = backend("b")
    now.attributes["env_vars"] = {}
    assert not plan_changes(desired(now), state_of(recorded), NODES).has_changes()
    now.attributes["env_vars"] = {"OMP_NUM_THREADS": "4"}
    assert plan_changes(desired(now), state_of(recorded), NODES).changes[0].action is Action.REPLACE


def autoscaled(name: str, low: int, high: int, cpus: float = 1.0) -> ResourceSpec:
    spec = backend(name, cpus=cpus)
    del spec.attributes["num_replicas"]
    spec.attributes["autoscaling"] = {"min_replicas": low, "max_replicas": high, "target_ongoing_requests": 2.0,
                                      "initial_replicas": None}
    return spec


def test_autoscaled_backends_place_their_minimum_and_switching_to_autoscaling_is_in_place():
    plan = plan_changes(desired(autoscaled("b", 2, 8)), None, NODES)  # 8 CPUs at max, 4 on the node: still fine
    assert (plan.replicas_after, plan.replicas_max_after) == (2, 8)
    assert plan.placement["replicas"] == 2
    with pytest.raises(PlanError, match=r"1 of 5 replicas needing .*; lower autoscaling min_replicas or"):
        plan_changes(desired(autoscaled("b", 5, 8)), None, NODES)
    switched = plan_changes(desired(autoscaled("b", 1, 3)), state_of(backend("b", replicas=2)), NODES)
    (change,) = switched.actionable
    assert change.action is Action.UPDATE
    assert {d.path for d in change.diffs} == {
        "num_replicas", "autoscaling.min_replicas", "autoscaling.max_replicas", "autoscaling.target_ongoing_requests",
    }
    assert not any(d.forces_replacement for d in change.diffs)


def test_traffic_leaves_a_backend_before_it_is_replaced_when_it_goes_to_backends_that_stay():
    split = lambda weights: ResourceSpec(  # noqa: E731
        ENDPOINT, "e", {"route": "/e", "traffic": weights}, [f"backend.{n}" for n in weights], "main.py:2")
    before = (backend("old"), backend("cand"), split({"cand": 1.0, "old": 0.0}))
    after = (backend("old"), backend("cand", sha="b" * 64), split({"cand": 0.0, "old": 1.0}))
    plan = plan_changes(desired(*after), state_of(*before), NODES)
    assert [(c.address, c.action) for c in plan.actionable] == [
        ("endpoint.e", Action.UPDATE), ("backend.cand", Action.REPLACE),  # no request meets the new code on its way out
    ]
    # Traffic going *to* a replaced or new backend still waits for it to be ready.
    onto = (backend("old"), backend("cand", sha="b" * 64), split({"cand": 0.5, "old": 0.5}))
    plan = plan_changes(desired(*onto), state_of(*before), NODES)
    assert [c.address for c in plan.actionable] == ["backend.cand", "endpoint.e"]
