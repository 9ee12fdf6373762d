"""Streaming (issue #17, item 2): a backend's chunks reach HTTP clients and handles as they are yielded, through
the front proxy, never buffered."""
from __future__ import annotations

import asyncio
import time

import pytest
import requests

import servectl
from tests.conftest import copy_example, run_cli

pytestmark = pytest.mark.ray


def _first_chunk_and_total(url: str) -> tuple[float, float, list[bytes]]:
    started = time.monotonic()
    first = None
    chunks = []
    with requests.get(url, stream=True, timeout=60) as answer:
        assert answer.status_code == 200, answer.text
        for chunk in answer.iter_content(chunk_size=None):
            if first is None:
                first = time.monotonic() - started
            chunks.append(chunk)
    return first or 0.0, time.monotonic() - started, chunks


def test_chunks_arrive_as_they_are_yielded_over_http_and_handles(ray_cluster, tmp_path, applied_dirs):
    config = copy_example("streaming", tmp_path)
    applied_dirs.append(config)
    applied = run_cli(config, "apply", "--auto-approve")
    assert applied.code == 0, applied.output

    # A generator: 5 lines, 0.6 s apart. The first arrives long before the last is yielded.
    first, total, chunks = _first_chunk_and_total(ray_cluster.url("/count?n=5&delay=0.6"))
    assert b"".join(chunks) == b"0\n1\n2\n3\n4\n"
    assert total >= 2.4 and first < total - 1.8, (first, total)

    # Server-sent events from a FastAPI StreamingResponse (an ingress backend), as the app sends them.
    started = time.monotonic()
    with requests.get(ray_cluster.url("/events/ticks?n=4&delay=0.6"), stream=True, timeout=60) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        lines = answer.iter_lines()
        assert next(lines) == b"event: tick" and time.monotonic() - started < 1.6
        rest = [line for line in lines if line]
    assert rest == [b"data: 0", b"event: tick", b"data: 1", b"event: tick", b"data: 2", b"event: tick", b"data: 3"]

    # Through handles: an iterator of the chunks (sync), an async iterator (async handle), each as yielded.
    servectl.connect(str(config))
    handle = servectl.get_handle("count").options(stream=True)
    started = time.monotonic()
    seen = []
    for chunk in handle.remote(n=3, delay=0.6):
        seen.append((chunk, time.monotonic() - started))
    assert [chunk for chunk, _ in seen] == ["0\n", "1\n", "2\n"]
    assert seen[0][1] < seen[-1][1] - 1.0, seen

    async def collect() -> list[str]:
        streaming = servectl.get_handle("count", sync=False).options(stream=True)
        return [chunk async for chunk in streaming.remote(n=3, delay=0.1)]

    assert asyncio.run(collect()) == ["0\n", "1\n", "2\n"]
