"""SIGTERM (a CI runner cancelling a job, `kill`) ends an apply as Ctrl-C does: one line, a true state, no lock left."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.conftest import SERVECTL, run_cli, write_config

pytestmark = pytest.mark.ray

MAIN = '''
from servectl import Backend, Endpoint, LocalRay
LocalRay()
Endpoint("slow_start", route="/slow_start", backend=Backend("slow_start", "models:Slow", ray_actor_options={"num_cpus": 0.1}))
'''
MODELS = '''
import time

class Slow:
    def __init__(self):
        time.sleep(12)  # long enough to be signalled in (2 s after it starts), short enough to clean up after

    def __call__(self, request):
        return "up"
'''


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_apply_is_one_line_and_leaves_a_true_state_and_no_lock(ray_cluster, tmp_path, applied_dirs, sig):
    config = write_config(tmp_path / f"interrupted-{sig.name}", MAIN, models=MODELS)
    applied_dirs.append(config)
    # As from a terminal: SIGINT at its default even when the suite runs where it is ignored (a background job of a
    # non-interactive shell ignores it, and a child inherits that; Python then installs no KeyboardInterrupt).
    proc = subprocess.Popen([SERVECTL, "-C", str(config), "apply", "--auto-approve"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    seen = ""
    while "backend.slow_start: creating" not in seen:  # the change is under way: Serve is starting the replica
        assert time.monotonic() < deadline and proc.poll() is None, seen
        seen += proc.stdout.readline()
    time.sleep(2)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (proc.returncode, out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ["Interrupted. The state records every change that finished."], err
    assert "Traceback" not in out + err and "Fatal Python" not in out + err and "Stack" not in out + err
    state = json.loads((config / "servectl.state.json").read_text())
    assert state["resources"]["backend.slow_start"]["status"] == "applying"  # true: it was under way
    assert not (config / "servectl.state.json.lock.info").exists()  # the lock went with the command
    planned = run_cli(config, "plan")
    assert planned.code == 0 and "the last apply stopped before this change finished" in planned.stdout, planned.output
