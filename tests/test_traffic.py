"""Shard-key space allocation: exact shares, and only keys of shrinking backends move."""
from __future__ import annotations

import random

import pytest

from servectl.routing.traffic import KEY_SPACE, allocate, backend_at, key_point, moved_fraction, shares


def total(segments, backend):
    return sum(hi - lo for lo, hi in segments.get(backend, []))


def test_shares_sum_exactly_and_follow_weights():
    s = shares({"a": 0.99, "b": 0.01, "c": 0.0})
    assert sum(s.values()) == KEY_SPACE and s == {"a": 990_000, "b": 10_000}
    thirds = shares({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    assert sum(thirds.values()) == KEY_SPACE and max(thirds.values()) - min(thirds.values()) <= 1


def test_allocation_covers_the_space_once():
    segs = allocate({"a": 0.5, "b": 0.3, "c": 0.2})
    assert total(segs, "a") == 500_000 and total(segs, "b") == 300_000 and total(segs, "c") == 200_000
    for point in range(0, KEY_SPACE, 997):
        assert backend_at(segs, point) is not None


def test_contiguous_layout_would_move_an_unchanged_backend_but_this_does_not():
    before = allocate({"a": 0.3, "b": 0.3, "c": 0.4})
    after = allocate({"a": 0.2, "b": 0.3, "c": 0.5}, before)
    # b's share is unchanged: none of its keys move; only a's lost tenth moves (to c).
    for lo, hi in before["b"]:
        assert backend_at(after, lo) == "b" and backend_at(after, hi - 1) == "b"
    assert moved_fraction(before, after) == pytest.approx(0.1, abs=1e-6)


def test_random_weight_changes_move_only_keys_of_shrinking_backends():
    rng = random.Random(7)
    names = ["a", "b", "c", "d"]
    segs = allocate({"a": 1.0})
    weights = {"a": 1.0}
    for _ in range(200):
        raw = {n: rng.choice([0, 0, rng.random()]) for n in names}
        if not any(raw.values()):
            raw["a"] = 1.0
        new_weights = {n: w / sum(raw.values()) for n, w in raw.items()}
        new_segs = allocate(new_weights, segs)
        old_share, new_share = shares(weights), shares(new_weights)
        for backend, target in new_share.items():
            assert total(new_segs, backend) == target
        for _ in range(300):
            point = rng.randrange(KEY_SPACE)
            was, now = backend_at(segs, point), backend_at(new_segs, point)
            if was != now:
                assert new_share.get(was, 0) < old_share.get(was, 0), (was, now)
        # and exactly the shrinkage moves, no more
        shrink = sum(max(0, old_share.get(b, 0) - new_share.get(b, 0)) for b in set(old_share) | set(new_share))
        assert moved_fraction(segs, new_segs) == pytest.approx(shrink / KEY_SPACE, abs=1e-6)
        segs, weights = new_segs, new_weights


def test_key_point_is_crc32_mod_space():
    import zlib

    assert key_point("user-42") == zlib.crc32(b"user-42") % KEY_SPACE


def test_deleting_backends_waits_one_policy_period_after_traffic_left_each_not_one_per_backend(monkeypatch):
    """A handle may hold a policy up to POLICY_TTL_S: a backend is deleted only once that long has passed since the
    write that stopped routing to it — counted from that write, so deleting three backends waits once."""
    from servectl.model.plan import Action, ResourceChange
    from servectl.providers import serve_deploy

    slept: list[float] = []
    monkeypatch.setattr(serve_deploy.time, "sleep", slept.append)
    clock = {"now": 100.0}
    monkeypatch.setattr(serve_deploy.time, "monotonic", lambda: clock["now"])
    drain = serve_deploy.HandleDrain()
    delete = lambda name: ResourceChange(f"backend.{name}", "backend", name, Action.DELETE, {}, None)  # noqa: E731
    drain.wait(delete("gone"))  # nothing written by this process: traffic left before it started
    assert slept == [0.0]
    drain.written({"e": {"segments": {"a": [[0, 10]], "b": [[10, 20]]}, "shadow": {"s": 0.1}}})
    clock["now"] = 100.5
    drain.written({"e": {"segments": {"b": [[0, 20]]}, "shadow": {}}})  # a and s let go at 100.5
    clock["now"] = 101.0
    drain.wait(delete("a"))
    drain.wait(delete("s"))
    drain.wait(delete("old"))  # not routed since the first write (100.0)
    wait = serve_deploy.POLICY_TTL_S + serve_deploy.HANDLE_POLICY_MARGIN_S
    assert slept[1:] == [pytest.approx(0.5 + wait - 1.0), pytest.approx(0.5 + wait - 1.0), pytest.approx(wait - 1.0)]
