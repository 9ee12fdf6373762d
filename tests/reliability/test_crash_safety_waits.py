"""Crash safety, part two: `servectl apply` SIGKILLed inside each of its six health waits (see ``crash.py``)."""
from __future__ import annotations

import pytest

from tests.reliability.crash import HEALTH_WAIT_POINTS, kill_at_points

pytestmark = pytest.mark.ray


def test_kills_in_health_waits_leave_true_states_that_converge(ray_cluster, tmp_path, applied_dirs, monkeypatch):
    monkeypatch.setenv("SERVECTL_INGRESS", "python")  # the fallback data path (crash.py)
    applied_dirs.append(tmp_path / "crash")  # destroyed afterwards, however the test ends
    kills, corrupt, converged, _ = kill_at_points(HEALTH_WAIT_POINTS, tmp_path)
    assert (kills, corrupt, converged) == (len(HEALTH_WAIT_POINTS), 0, len(HEALTH_WAIT_POINTS)) == (6, 0, 6)
