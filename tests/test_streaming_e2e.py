"""Streaming (issue #17, item 2): a backend's chunks reach HTTP clients and handles as they are yielded, through
the front proxy, never buffered."""
from __future__ import annotations

import asyncio
import time

import pytest
import requests

import servectl
from servectl.runtime.ingress import AppStatusError
from tests.conftest import copy_example, run_cli, scrape, write_config

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

    # An ingress app's StreamingResponse through a handle: its body as the app sends it, chunk by chunk (bytes).
    ticks = servectl.get_handle("events").options(stream=True, path="/ticks")
    started = time.monotonic()
    seen = [(chunk, time.monotonic() - started) for chunk in ticks.remote(n=3, delay=0.6)]
    assert [chunk for chunk, _ in seen] == [b"event: tick\ndata: %d\n\n" % i for i in range(3)], seen
    assert seen[0][1] < seen[-1][1] - 1.0, seen

    async def collect_ticks() -> list[bytes]:
        streaming = servectl.get_handle("events", sync=False).options(stream=True, path="/ticks")
        return [chunk async for chunk in streaming.remote(n=2, delay=0.1)]

    assert asyncio.run(collect_ticks()) == [b"event: tick\ndata: 0\n\n", b"event: tick\ndata: 1\n\n"]
    with pytest.raises(AppStatusError, match="the app answered 404") as refused:  # raised, not streamed
        list(servectl.get_handle("events").options(stream=True, path="/nowhere").remote())
    assert refused.value.status == 404


DISCONNECT_MAIN = """
from servectl import Backend, Endpoint, LocalRay
LocalRay()
small = {"num_cpus": 0.1}
Endpoint("dc_async", route="/dc-async", backend=Backend("dc_async", "models:AsyncLines", ray_actor_options=small))
Endpoint("dc_sync", route="/dc-sync", backend=Backend("dc_sync", "models:SyncLines", ray_actor_options=small))
Endpoint("dc_sse", route="/dc-sse", backend=Backend("dc_sse", "models:Events", ray_actor_options=small))
"""
DISCONNECT_MODELS = '''
import asyncio
import time

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from ray import serve

STATE = {"yielded": -1, "closed": False}  # one replica each: what its generator did


class AsyncLines:
    async def __call__(self, request):
        if request.query_params.get("state"):
            return dict(STATE)
        STATE.update(yielded=-1, closed=False)

        async def lines():
            try:
                for i in range(100):
                    STATE["yielded"] = i
                    yield f"{i}\\\\n"
                    await asyncio.sleep(0.2)
            finally:
                STATE["closed"] = True
        return lines()


class SyncLines:
    def __call__(self, request):
        if request.query_params.get("state"):
            return dict(STATE)
        STATE.update(yielded=-1, closed=False)

        def lines():
            try:
                for i in range(100):
                    STATE["yielded"] = i
                    yield f"{i}\\\\n"
                    time.sleep(0.2)
            finally:
                STATE["closed"] = True
        return lines()


app = FastAPI()


@serve.ingress(app)
class Events:
    @app.get("/")
    def state(self) -> dict:
        return dict(STATE)

    @app.get("/ticks")
    def ticks(self) -> StreamingResponse:
        STATE.update(yielded=-1, closed=False)

        async def events():
            try:
                for i in range(100):
                    STATE["yielded"] = i
                    yield f"data: {i}\\\\n\\\\n"
                    await asyncio.sleep(0.2)
            finally:
                STATE["closed"] = True
        return StreamingResponse(events(), media_type="text/event-stream")
'''


def test_a_client_that_leaves_mid_stream_stops_the_generator_on_the_replica(ray_cluster, tmp_path, applied_dirs):
    config = write_config(tmp_path / "disconnect", DISCONNECT_MAIN, models=DISCONNECT_MODELS)
    applied_dirs.append(config)
    applied = run_cli(config, "apply", "--auto-approve")
    assert applied.code == 0, applied.output
    for stream, state in (("/dc-async", "/dc-async?state=1"), ("/dc-sync", "/dc-sync?state=1"),
                          ("/dc-sse/ticks", "/dc-sse/")):
        with requests.get(ray_cluster.url(stream), stream=True, timeout=30) as answer:
            assert answer.status_code == 200
            chunks = answer.iter_content(chunk_size=None)
            next(chunks), next(chunks)  # two chunks read, then the connection is closed mid-stream
        deadline = time.monotonic() + 10
        seen = requests.get(ray_cluster.url(state), timeout=30).json()
        while not seen["closed"] and time.monotonic() < deadline:
            time.sleep(0.2)
            seen = requests.get(ray_cluster.url(state), timeout=30).json()
        assert seen["closed"] and seen["yielded"] < 20, (stream, seen)  # stopped within ~4 s of 20 s of chunks
        time.sleep(1)
        assert requests.get(ray_cluster.url(state), timeout=30).json()["yielded"] == seen["yielded"], stream


SHADOW_MAIN = """
from servectl import Backend, Endpoint, LocalRay
LocalRay()
small = {"num_cpus": 0.1}
Endpoint("sh_gen", route="/sh-gen", backend=Backend("sh_gen_fast", "models:Lines", 0.2, ray_actor_options=small),
         shadow={Backend("sh_gen_slow", "models:Lines", 3.0, ray_actor_options=small): 1.0})
Endpoint("sh_app", route="/sh-app", backend=Backend("sh_app_fast", "models:Ticks", 0.2, ray_actor_options=small),
         shadow={Backend("sh_app_slow", "models:Ticks", 3.0, ray_actor_options=small): 1.0})
"""
SHADOW_MODELS = '''
import asyncio
import time

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from ray import serve


class Lines:
    def __init__(self, delay):
        self.delay = delay

    def __call__(self, request):
        def lines():
            for i in range(5):
                yield f"{i}\\n"
                time.sleep(self.delay)
        return lines()


app = FastAPI()


@serve.ingress(app)
class Ticks:
    def __init__(self, delay):
        self.delay = delay

    @app.get("/")
    def ticks(self) -> StreamingResponse:
        async def events():
            for i in range(5):
                yield f"data: {i}\\n\\n"
                await asyncio.sleep(self.delay)
        return StreamingResponse(events(), media_type="text/event-stream")
'''


def test_a_shadowed_stream_is_never_held_by_its_slow_shadow(ray_cluster, tmp_path, applied_dirs):
    """Every request of both endpoints is copied to a shadow yielding one chunk per 3 s (15 s a stream): the
    caller's chunks still come every 0.2 s, over HTTP (a generator backend and an ingress app) and handles."""
    config = write_config(tmp_path / "shadowed", SHADOW_MAIN, models=SHADOW_MODELS)
    applied_dirs.append(config)
    applied = run_cli(config, "apply", "--auto-approve")
    assert applied.code == 0, applied.output

    for path, whole in (("/sh-gen", b"0\n1\n2\n3\n4\n"), ("/sh-app/", b"".join(b"data: %d\n\n" % i for i in range(5)))):
        for _ in range(2):
            first, total, chunks = _first_chunk_and_total(ray_cluster.url(path))
            assert b"".join(chunks) == whole
            assert first < 2.0 and total < 5.0, (path, first, total)  # the shadow's stream takes 15 s

    servectl.connect(str(config))
    started = time.monotonic()
    seen = list(servectl.get_handle("sh_gen").options(stream=True).remote())
    assert seen == ["0\n", "1\n", "2\n", "3\n", "4\n"] and time.monotonic() - started < 5.0

    # The copies were sent (the primaries count them): the shadows were there to hold the callers, and did not.
    deadline = time.monotonic() + 30
    sent: dict[str, float] = {}
    while time.monotonic() < deadline and not {"sh_gen_slow", "sh_app_slow"} <= set(sent):
        sent = {dict(k[1:])["backend"]: v for k, v in scrape(ray_cluster, "ray_servectl_shadow_sent").items()
                if dict(k[1:]).get("backend", "").startswith("sh_")}
        time.sleep(1)
    assert sent.get("sh_gen_slow", 0) >= 2 and sent.get("sh_app_slow", 0) >= 2, sent
