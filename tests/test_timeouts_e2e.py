"""Timeouts and backpressure (issue #17, item 5): a slow HTTP request gets 504 within its bound while the replica
serves on; beyond the queue limit requests are refused at once with 503 and Retry-After; every setting changes in
place and reaches Serve."""
from __future__ import annotations

import concurrent.futures
import time

import pytest
import requests

from tests.conftest import copy_example, run_cli
from tests.test_cli_e2e import serve_details

pytestmark = pytest.mark.ray


def _timed(url: str) -> tuple[int, float, dict]:
    started = time.monotonic()
    answer = requests.get(url, timeout=60)
    return answer.status_code, time.monotonic() - started, {k.lower(): v for k, v in answer.headers.items()}


def test_a_slow_request_times_out_a_full_queue_refuses_and_settings_change_in_place(ray_cluster, tmp_path, applied_dirs):
    config = copy_example("timeouts", tmp_path)
    applied_dirs.append(config)
    applied = run_cli(config, "apply", "--auto-approve")
    assert applied.code == 0, applied.output
    deployment = serve_details(ray_cluster)["applications"]["slow"]["deployments"]["slow"]["deployment_config"]
    assert (deployment["max_queued_requests"], deployment["graceful_shutdown_timeout_s"],
            deployment["health_check_period_s"], deployment["health_check_timeout_s"]) == (2, 5.0, 2.0, 10.0)

    assert _timed(ray_cluster.url("/slow?delay=0.1"))[0] == 200
    status, took, _ = _timed(ray_cluster.url("/slow?delay=5"))
    assert status == 504 and 0.9 <= took < 2.5, (status, took)  # request_timeout_s = 1
    status, took, _ = _timed(ray_cluster.url("/slow?delay=0.1"))
    assert status == 200 and took < 2.0, (status, took)  # the replica serves on

    # In place: the plan says so, and no replica restarts.
    planned = run_cli(config, "plan", "--var", "timeout_s=30", "--var", "queue=2")
    assert "will be updated in place" in planned.stdout and "request_timeout_s 1.0 → 30.0" in planned.stdout, planned.output
    assert "replicas restart" not in planned.stdout
    assert run_cli(config, "apply", "--auto-approve", "--var", "timeout_s=30").code == 0

    # One running, two queued (max_concurrent_queries=1, max_queued_requests=2): the rest are refused at once.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(_timed, [ray_cluster.url("/slow?delay=1.5")] * 8))
    refused = [(took, headers) for status, took, headers in answers if status == 503]
    served = [status for status, _, _ in answers if status == 200]
    assert len(refused) >= 3 and served, answers
    assert all(took < 1.0 and headers.get("retry-after") == "1" for took, headers in refused), refused
