"""Traffic policy math: weights → slices of a fixed key space, moving as few keys as possible.

Every request gets a point in ``[0, KEY_SPACE)``: the CRC32 of its shard key
(``X-SERVE-SHARD-KEY`` or ``handle.options(shard_key=…)``) modulo the space, or
a random point when it has none. Each backend owns a set of segments of the
space whose total length is its weight. HTTP (the front proxy) and handles use
the same hash and the same segments, so a key lands on the same backend
either way.

When weights change, each backend keeps as much of its old segments as its
new share allows, and only the space given up is handed to backends that
grow. So a key moves only if its backend's share shrank — unlike a layout of
contiguous intervals (Ray Serve 1.x, Istio), where changing one weight shifts
the boundaries of backends that did not change.
"""
from __future__ import annotations

import zlib
from typing import Optional

KEY_SPACE = 1_000_000

Segments = dict[str, list[list[int]]]  # backend -> [[lo, hi), ...], JSON-friendly


def key_point(shard_key: str) -> int:
    """The point a shard key maps to; the front proxy computes ``crc32,mod(KEY_SPACE)`` alike."""
    return zlib.crc32(shard_key.encode("utf-8")) % KEY_SPACE


def shares(weights: dict[str, float]) -> dict[str, int]:
    """Integer slices of KEY_SPACE per backend by largest remainder, summing exactly to KEY_SPACE."""
    positive = {b: w for b, w in weights.items() if w > 0}
    total = sum(positive.values())
    if not positive or total <= 0:
        return {}
    exact = {b: w / total * KEY_SPACE for b, w in positive.items()}
    out = {b: int(v) for b, v in exact.items()}
    left = KEY_SPACE - sum(out.values())
    for b in sorted(exact, key=lambda b: (-(exact[b] - out[b]), b))[:left]:
        out[b] += 1
    return out


def _merge(segments: list[list[int]]) -> list[list[int]]:
    merged: list[list[int]] = []
    for lo, hi in sorted(segments):
        if hi <= lo:
            continue
        if merged and merged[-1][1] == lo:
            merged[-1][1] = hi
        else:
            merged.append([lo, hi])
    return merged


def allocate(weights: dict[str, float], previous: Optional[Segments] = None) -> Segments:
    """Segments for ``weights`` that keep every key whose backend did not shrink where it was."""
    target = shares(weights)
    previous = previous or {}
    kept: Segments = {}
    free: list[list[int]] = []
    covered: list[list[int]] = []
    for backend in sorted(previous):
        budget = target.get(backend, 0)
        mine: list[list[int]] = []
        for lo, hi in sorted(previous[backend]):
            covered.append([lo, hi])
            take = min(hi - lo, budget)
            if take > 0:
                mine.append([lo, lo + take])
                budget -= take
            if lo + take < hi:
                free.append([lo + take, hi])
        if mine:
            kept[backend] = mine
    cursor = 0
    for lo, hi in _merge(covered):  # space no backend held before (first allocation: all of it)
        if cursor < lo:
            free.append([cursor, lo])
        cursor = max(cursor, hi)
    if cursor < KEY_SPACE:
        free.append([cursor, KEY_SPACE])
    free = _merge(free)

    for backend in sorted(target):
        need = target[backend] - sum(hi - lo for lo, hi in kept.get(backend, []))
        while need > 0 and free:
            lo, hi = free[0]
            take = min(hi - lo, need)
            kept.setdefault(backend, []).append([lo, lo + take])
            need -= take
            if lo + take < hi:
                free[0] = [lo + take, hi]
            else:
                free.pop(0)
    return {backend: _merge(segs) for backend, segs in sorted(kept.items()) if segs}


def backend_at(segments: Segments, point: int) -> Optional[str]:
    """The backend whose segments hold ``point`` (in ``[0, KEY_SPACE)``), or None when no segment does."""
    for backend, segs in segments.items():
        for lo, hi in segs:
            if lo <= point < hi:
                return backend
    return None


def moved_fraction(before: Segments, after: Segments) -> float:
    """Share of the key space whose backend changes between two allocations."""
    def owner_map(segments: Segments) -> list[tuple[int, int, str]]:
        return sorted((lo, hi, b) for b, segs in segments.items() for lo, hi in segs)

    points = sorted({0, KEY_SPACE} | {x for lo, hi, _ in owner_map(before) + owner_map(after) for x in (lo, hi)})
    moved = 0
    for lo, hi in zip(points, points[1:]):
        if backend_at(before, lo) != backend_at(after, lo):
            moved += hi - lo
    return moved / KEY_SPACE
