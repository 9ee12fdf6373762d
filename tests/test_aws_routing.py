"""The routing document and the node agents' reports in S3 (moto): versions, waits, and what a lagging node costs."""
from __future__ import annotations

import threading
import time

import pytest

from servectl.errors import ProviderError
from servectl.providers.aws_routing import RoutingStore


def routing_store(moto_server, name: str) -> RoutingStore:
    s3 = moto_server.client("s3")
    s3.create_bucket(Bucket=name)
    return RoutingStore(s3, name, "c1")


def test_versions_count_up_and_unchanged_documents_cost_nothing(moto_server):
    store = routing_store(moto_server, "routing-versions")
    assert store.read() == (None, None)
    assert store.publish({"api": {"route": "/api"}}, ["a"], 8001) == 1
    document, etag = store.read()
    assert document["version"] == 1 and document["backends"] == ["a"]
    assert store.read(etag) == (None, etag)  # a conditional GET: the agents' idle poll
    assert store.publish({}, ["a", "b"], 8001) == 2
    assert store.read(etag)[0]["version"] == 2


def test_wait_for_returns_once_every_node_serves_and_names_the_laggards(moto_server):
    store = routing_store(moto_server, "routing-waits")
    version = store.publish({}, ["a"], 8001)
    assert store.report_of("10.0.0.1") is None
    store.report(ip := "10.0.0.1", version, True)
    assert store.report_of(ip)["version"] == version

    late = threading.Timer(1.0, store.report, args=("10.0.0.2", version, True))
    late.start()
    started = time.monotonic()
    store.wait_for(version, ["10.0.0.1", "10.0.0.2"], timeout_s=20)
    assert 0.9 < time.monotonic() - started < 10

    with pytest.raises(ProviderError, match=r"routing version 2 not served after 1s by node\(s\) 10.0.0.3"):
        store.wait_for(store.publish({}, ["a"], 8001), ["10.0.0.3"], timeout_s=1)
    store.clear()
    assert store.report_of(ip) is None and store.current() is None
