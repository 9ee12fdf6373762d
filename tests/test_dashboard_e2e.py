"""Ray's dashboard REST API as servectl calls it (token auth, nodes, Serve's state, code packages)."""
from __future__ import annotations

import hashlib
import time

import pytest

from servectl.errors import ProviderError
from servectl.providers.dashboard import RayDashboard
from servectl.providers.embedded_cluster import free_ports

pytestmark = pytest.mark.ray


def test_nodes_serve_state_and_packages_through_the_rest_api(ray_cluster):
    dashboard = RayDashboard(ray_cluster.dashboard_url, ray_cluster.token)
    deadline = time.monotonic() + 20
    nodes = dashboard.nodes()
    while not nodes and time.monotonic() < deadline:  # the dashboard lists a node a few seconds after it starts
        time.sleep(0.5)
        nodes = dashboard.nodes()
    (node,) = nodes
    assert node["resources_total"]["CPU"] == 4 and node["resources_total"]["GPU"] == 2
    details = dashboard.serve_details()
    assert isinstance(details, dict)

    zipped = b"PK\x05\x06" + b"\x00" * 18  # an empty zip archive
    uri = f"gcs://_ray_pkg_servectl_test_{hashlib.sha1(zipped).hexdigest()[:16]}.zip"
    assert not dashboard.package_exists(uri)
    dashboard.upload_package(uri, zipped)
    assert dashboard.package_exists(uri)


def test_a_wrong_token_or_no_dashboard_is_one_clear_line(ray_cluster):
    with pytest.raises(ProviderError, match=r"refused servectl's token \(40[13]\); check the cluster's auth token"):
        RayDashboard(ray_cluster.dashboard_url, "not-the-token").serve_details()
    (closed,) = free_ports(1)
    with pytest.raises(ProviderError, match=rf"^cannot reach Ray's dashboard at http://127.0.0.1:{closed}: "):
        RayDashboard(f"http://127.0.0.1:{closed}", "x", timeout_s=2).nodes()
