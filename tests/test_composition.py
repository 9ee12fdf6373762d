"""Composition read from the code: handle calls inside the served class, and cycles through endpoints."""
from __future__ import annotations

import textwrap

import pytest

from servectl.loading.composition import check_cycles, handle_calls
from servectl.config import Backend
from servectl.errors import ConfigError

MODELS = '''
import servectl


def helper():
    return servectl.get_handle("never_served_by_anyone")


class Front:
    def __init__(self):
        self.rank = servectl.get_handle("rank", sync=False)
        self.name = "front"

    async def __call__(self, request):
        return await servectl.get_handle(self.name).remote()  # computed: cannot be seen


class Rank:
    def __call__(self, request):
        return 1
'''


def test_only_the_served_class_is_read_and_literal_names_only(tmp_path):
    (tmp_path / "models.py").write_text(textwrap.dedent(MODELS))
    front = Backend("front", "models:Front")
    assert handle_calls(front, {"origin": "models.py"}, str(tmp_path)) == [("rank", "models.py:11")]
    assert handle_calls(Backend("rank", "models:Rank"), {"origin": "models.py"}, str(tmp_path)) == []
    assert handle_calls(Backend("w", "pkg.mod:C"), {"origin": "workers"}, str(tmp_path)) == []


def test_a_diamond_is_fine_and_a_three_step_cycle_is_named_step_by_step():
    routes = {"e_b": ["b"], "e_c": ["c"], "e_d": ["d"], "e_a": ["a"]}
    sites = {name: f"main.py:{i}" for i, name in enumerate("abcd", start=1)}
    check_cycles({"a": [("e_b", "m.py:1"), ("e_c", "m.py:2")], "b": [("e_d", "m.py:3")], "c": [("e_d", "m.py:4")]},
                 routes, sites)
    with pytest.raises(ConfigError) as caught:
        check_cycles({"a": [("e_b", "m.py:1")], "b": [("e_c", "m.py:2")], "c": [("e_a", "m.py:3")]}, routes, sites)
    assert str(caught.value) == (
        "main.py:1: cyclic composition: backend 'a' calls endpoint 'e_b' (m.py:1), which routes to backend 'b'; "
        "backend 'b' calls endpoint 'e_c' (m.py:2), which routes to backend 'c'; backend 'c' calls endpoint 'e_a' "
        "(m.py:3), which routes to backend 'a'; a request would call itself until it times out: break the cycle"
    )
