"""A Serve deploy through the dashboard: a 400 is final, a 5xx is sent again until a deadline (a real HTTP server)."""
from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator

import pytest

from servectl.errors import ProviderError
from servectl.providers import dashboard as dashboard_module
from servectl.providers.dashboard import DashboardError, RayDashboard


class Scripted(http.server.BaseHTTPRequestHandler):
    """Answers each PUT with the next status of the server's script (the last one repeats), records the bodies."""

    def do_PUT(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        server = self.server
        server.bodies.append(json.loads(body))
        status = server.script[min(len(server.bodies), len(server.script)) - 1]
        text = b"" if status == 200 else b"Traceback ...\nThe actor never ran - it was cancelled before it started running."
        self.send_response(status)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    server.bodies, server.script = [], [200]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def client(server) -> RayDashboard:
    return RayDashboard(f"http://127.0.0.1:{server.server_address[1]}", "token", timeout_s=5)


def test_a_dashboard_failure_is_sent_again_and_a_refusal_is_not(scripted, monkeypatch):
    monkeypatch.setattr(dashboard_module, "DEPLOY_RETRY_FIRST_S", 0.05)
    config = {"applications": [{"name": "a"}]}
    scripted.script = [500, 503, 200]
    client(scripted).deploy(config)
    assert scripted.bodies == [config] * 3  # the same whole config each time: declarative, so safe to resend

    scripted.bodies, scripted.script = [], [400]
    with pytest.raises(DashboardError) as refused:
        client(scripted).deploy(config)
    assert refused.value.status == 400 and len(scripted.bodies) == 1


def test_a_dashboard_that_keeps_failing_is_given_up_at_the_deadline(scripted, monkeypatch):
    monkeypatch.setattr(dashboard_module, "DEPLOY_TIMEOUT_S", 1.5)
    monkeypatch.setattr(dashboard_module, "DEPLOY_RETRY_FIRST_S", 0.2)
    scripted.script = [500]
    started = time.monotonic()
    with pytest.raises(DashboardError, match=r"answered 500 to PUT /api/serve/applications/: The actor never ran") as err:
        client(scripted).deploy({"applications": []})
    assert err.value.status == 500 and time.monotonic() - started < 3
    assert 2 <= len(scripted.bodies) <= 4  # 0.2 + 0.4 + 0.8 s of pauses fit before the deadline, no more
    assert isinstance(err.value, ProviderError)
