"""Crash safety, part one: `servectl apply` SIGKILLed after each of its changes and inside each health wait
(11 of the 20 points; the state-write points are ``test_crash_safety_writes.py``; see ``crash.py``)."""
from __future__ import annotations

import pytest

from tests.reliability.crash import CHANGE_POINTS, kill_at_points

pytestmark = pytest.mark.ray


def test_kills_after_changes_and_in_health_waits_leave_true_states_that_converge(ray_cluster, tmp_path, applied_dirs):
    applied_dirs.append(tmp_path / "crash")  # destroyed afterwards, however the test ends
    kills, corrupt, converged, _ = kill_at_points(CHANGE_POINTS, tmp_path)
    assert (kills, corrupt, converged) == (len(CHANGE_POINTS), 0, len(CHANGE_POINTS)) == (11, 0, 11)
