"""What a change costs is declared once, on the config fields; everything else reads it from there."""
from __future__ import annotations

import re
from pathlib import Path

from servectl.config.costs import UpdateType, costs, update_types
from servectl.config.resources import Backend
from servectl.loading.loader import load_config
from servectl.model.kinds import BACKEND, ENDPOINT, attribute_costs, in_place_attributes
from servectl.model.plan import AttributeDiff
from servectl.planning.planner import attribute_diffs, reasons_for

REPO = Path(__file__).resolve().parent.parent


def test_every_attribute_the_planner_diffs_has_a_declared_cost():
    desired = load_config(str(REPO / "examples" / "canary"))
    for spec in desired.resources.values():
        declared = set(attribute_costs(spec.kind))
        assert set(spec.attributes) <= declared, (spec.address, sorted(set(spec.attributes) - declared))
    assert {"code", "num_replicas", "user_config", "env_vars"} <= set(attribute_costs(BACKEND))
    assert {"route", "traffic", "shadow", "models", "deregistration_delay_s", "rollout"} == set(attribute_costs(ENDPOINT))


def test_in_place_sets_derive_from_the_fields():
    assert in_place_attributes(BACKEND) == frozenset(
        {"num_replicas", "autoscaling", "max_concurrent_queries", "user_config", "max_batch_size", "batch_wait_timeout_s",
         "request_timeout_s", "max_queued_requests", "graceful_shutdown_timeout_s", "health_check_period_s",
         "health_check_timeout_s", "max_models_per_replica"}
    )
    assert in_place_attributes(ENDPOINT) == frozenset({"route", "traffic", "shadow", "models", "deregistration_delay_s", "rollout"})
    # Two settings feed one attribute: they must agree (omp_num_threads lands in env_vars, code_version in code).
    assert update_types(Backend)["env_vars"] is UpdateType.RESTART and update_types(Backend)["code"] is UpdateType.RESTART


def test_two_costs_for_one_attribute_are_refused():
    from pydantic import BaseModel, Field

    class Clash(BaseModel):
        a: int = Field(0, json_schema_extra=costs(UpdateType.LIGHTWEIGHT, "x"))
        b: int = Field(0, json_schema_extra=costs(UpdateType.RESTART, "x"))

    try:
        update_types(Clash)
    except ValueError as err:
        assert "two costs" in str(err)
    else:
        raise AssertionError("a clash of costs was accepted")


def test_plan_reasons_say_the_declared_cost():
    before = {"num_replicas": 1, "user_config": {"t": 1}, "init_args": [1]}
    after = {"num_replicas": 2, "user_config": {"t": 2}, "init_args": [2]}
    reasons = reasons_for(attribute_diffs(BACKEND, before, after), BACKEND)
    assert "num_replicas 1 → 2" in reasons
    assert "user_config changed (reconfigure() runs on every replica)" in reasons
    assert "init_args.0 1 → 2 (replicas restart)" not in reasons  # lists are leaves, shown whole
    assert "init_args [1] → [2] (replicas restart)" in reasons
    assert [d.forces_replacement for d in attribute_diffs(BACKEND, before, after)] == [True, False, False]
    assert reasons_for([AttributeDiff("route", "/a", "/b", False)], ENDPOINT) == ["route '/a' → '/b'"]


def test_the_docs_cost_column_matches_the_fields():
    """docs/reference/config.md's Backend table says, per setting, what the field declares."""
    text = (REPO / "docs" / "reference" / "config.md").read_text(encoding="utf-8")
    table = text[text.index("| setting | default | meaning | change is |"):]
    table = table[: table.index("\n\n")]
    declared = dict((name, cost) for name, cost in _settings(Backend))
    seen = set()
    for row in table.splitlines()[2:]:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        names = [n.lstrip("*") for n in re.findall(r"`([*\w]+)", cells[0])]
        for name in names:
            cost = declared[name]
            said = cells[3]
            assert said.startswith("replace" if cost is UpdateType.RESTART else "in place"), (name, said, cost)
            seen.add(name)
    assert seen == set(declared), sorted(set(declared) - seen)


def _settings(model):
    from servectl.config.costs import setting_costs

    return setting_costs(model)
