"""Crash safety, part one: `servectl apply` SIGKILLed after each of its changes (5 of the 20 points; the health-wait
and state-write points are ``test_crash_safety_waits.py`` and ``test_crash_safety_writes.py``; see ``crash.py``)."""
from __future__ import annotations

import pytest

from tests.reliability.crash import AFTER_CHANGE_POINTS, kill_at_points

pytestmark = pytest.mark.ray


def test_kills_after_each_change_leave_true_states_that_converge(ray_cluster, tmp_path, applied_dirs, monkeypatch):
    monkeypatch.setenv("SERVECTL_INGRESS", "python")  # the fallback data path (crash.py)
    applied_dirs.append(tmp_path / "crash")  # destroyed afterwards, however the test ends
    kills, corrupt, converged, _ = kill_at_points(AFTER_CHANGE_POINTS, tmp_path)
    assert (kills, corrupt, converged) == (len(AFTER_CHANGE_POINTS), 0, len(AFTER_CHANGE_POINTS)) == (5, 0, 5)
