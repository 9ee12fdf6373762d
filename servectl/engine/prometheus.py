"""Prometheus text, read: samples, sums over label subsets, and histogram quantiles.

`servectl status` scrapes every node's Ray metrics endpoint (Ray Serve's
``ray_serve_*`` series and servectl's ``ray_servectl_*``) and reads them with
this; nothing here talks to the network.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    """One sample of Prometheus text: metric name, labels and value."""

    name: str
    labels: Mapping[str, str]
    value: float


def parse(text: str) -> list[Sample]:
    """The samples in Prometheus text exposition format.

    Comments, blank lines and lines it cannot read (no metric name, a value that is not a number) are skipped;
    a sample's timestamp is ignored.
    """
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            continue
        name, raw_labels, raw_value = match.groups()
        try:
            value = float(raw_value)
        except ValueError:
            continue
        labels = {key: value.replace('\\"', '"').replace("\\\\", "\\") for key, value in _LABEL.findall(raw_labels or "")}
        samples.append(Sample(name, labels, value))
    return samples


class Scrape:
    """Samples from one or more endpoints, summed over every label not asked about."""

    def __init__(self, samples: Iterable[Sample]) -> None:
        self.by_name: dict[str, list[Sample]] = {}
        for sample in samples:
            self.by_name.setdefault(sample.name, []).append(sample)

    def total(self, name: str, **match: str) -> float:
        """The sum of ``name``'s samples whose labels match ``match``, over every other label; 0.0 when none."""
        return sum(s.value for s in self.by_name.get(name, []) if all(s.labels.get(k) == v for k, v in match.items()))

    def buckets(self, name: str, **match: str) -> dict[float, float]:
        """Cumulative counts of histogram ``name`` (without ``_bucket``) by upper bound."""
        out: dict[float, float] = {}
        for sample in self.by_name.get(f"{name}_bucket", []):
            if all(sample.labels.get(k) == v for k, v in match.items()) and "le" in sample.labels:
                bound = math.inf if sample.labels["le"] in ("+Inf", "Inf") else float(sample.labels["le"])
                out[bound] = out.get(bound, 0.0) + sample.value
        return out


def delta(after: Mapping[float, float], before: Mapping[float, float]) -> dict[float, float]:
    """Per-bound growth between two scrapes; a series that restarted counts from zero."""
    return {bound: max(0.0, count - before.get(bound, 0.0)) for bound, count in after.items()}


def quantile(q: float, buckets: Mapping[float, float]) -> Optional[float]:
    """Prometheus's histogram_quantile: linear within the bucket that holds rank q·count."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # beyond the last finite bound: the best a histogram can say
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return bounds[-1] if not math.isinf(bounds[-1]) else lower_bound
