"""Crash safety, part three: `servectl apply` SIGKILLed halfway through a state write (fault injection), at 9 of
its 14 writes including the first, the last and the history entry's, in rounds of six in-place changes (see
``crash.py``)."""
from __future__ import annotations

import pytest

from tests.reliability.crash import WRITE_POINTS, WRITES_MAIN, WRITES_MODELS, kill_at_points

pytestmark = pytest.mark.ray


def test_kills_inside_state_writes_leave_true_states_that_converge(ray_cluster, tmp_path, applied_dirs, monkeypatch):
    monkeypatch.setenv("SERVECTL_INGRESS", "python")  # the fallback data path (crash.py)
    applied_dirs.append(tmp_path / "crash")  # destroyed afterwards, however the test ends
    kills, corrupt, converged, _ = kill_at_points(WRITE_POINTS, tmp_path, WRITES_MAIN, WRITES_MODELS)
    assert (kills, corrupt, converged) == (len(WRITE_POINTS), 0, len(WRITE_POINTS)) == (9, 0, 9)
