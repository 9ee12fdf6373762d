"""Reading Prometheus text the way `servectl status` does."""
from __future__ import annotations

import math

from servectl.engine.prometheus import Scrape, delta, parse, quantile

TEXT = '''
# HELP ray_serve_deployment_request_counter_total The number of queries that have been processed in this replica.
# TYPE ray_serve_deployment_request_counter_total counter
ray_serve_deployment_request_counter_total{application="a",deployment="a",replica="r1",route="/x"} 10.0
ray_serve_deployment_request_counter_total{application="a",deployment="a",replica="r2",route="/x"} 5.0
ray_serve_deployment_request_counter_total{application="b",deployment="b",replica="r3",route="/y"} 7.0
lat_bucket{deployment="a",le="10.0"} 50
lat_bucket{deployment="a",le="100.0"} 90
lat_bucket{deployment="a",le="+Inf"} 100
lat_count{deployment="a"} 100
odd{msg="say \\"hi\\", ok"} 1
'''


def test_totals_sum_over_the_labels_not_asked_about():
    scrape = Scrape(parse(TEXT))
    assert scrape.total("ray_serve_deployment_request_counter_total", deployment="a") == 15
    assert scrape.total("ray_serve_deployment_request_counter_total") == 22
    assert scrape.total("missing") == 0
    assert parse(TEXT)[-1].labels == {"msg": 'say "hi", ok'}


def test_quantiles_interpolate_within_buckets_like_prometheus():
    buckets = Scrape(parse(TEXT)).buckets("lat", deployment="a")
    assert buckets == {10.0: 50, 100.0: 90, math.inf: 100}
    assert quantile(0.5, buckets) == 10.0
    assert quantile(0.25, buckets) == 5.0
    assert math.isclose(quantile(0.7, buckets), 55.0)
    assert quantile(0.99, buckets) == 100.0  # in the +Inf bucket: the last finite bound
    assert quantile(0.5, {}) is None and quantile(0.5, {10.0: 0, math.inf: 0}) is None


def test_deltas_between_scrapes_never_go_negative():
    assert delta({10.0: 60, math.inf: 70}, {10.0: 50, math.inf: 80}) == {10.0: 10, math.inf: 0}
