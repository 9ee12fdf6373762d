"""The replica's batcher, driven directly on an event loop (the e2e tests cover it inside Serve)."""
from __future__ import annotations

import asyncio

import pytest

from servectl.runtime.batching import Batcher, BatchSizeError


def test_requests_that_queue_while_a_batch_runs_form_the_next_full_batch() -> None:
    # The gap Ray Serve 2.60's @serve.batch has: a slow model must see full
    # batches, not a string of tiny ones formed while it was busy.
    sizes: list[int] = []

    async def slow_model(items: list) -> list:
        sizes.append(len(items))
        await asyncio.sleep(0.05)
        return [item * 2 for item in items]

    async def main() -> list:
        batcher = Batcher(slow_model, "backend b", max_batch_size=8, batch_wait_timeout_s=0.001)
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)  # the first batch (of one) is running now
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 17)]
        return await asyncio.gather(first, *rest)

    results = asyncio.run(main())
    assert results == [i * 2 for i in range(17)]
    assert sizes == [1, 8, 8]


def test_a_partial_batch_waits_at_most_the_timeout() -> None:
    async def model(items: list) -> list:
        return [len(items)] * len(items)

    async def main() -> tuple[list, float]:
        batcher = Batcher(model, "backend b", max_batch_size=32, batch_wait_timeout_s=0.05)
        loop = asyncio.get_running_loop()
        start = loop.time()
        out = await asyncio.gather(*(batcher.submit(i) for i in range(3)))
        return out, loop.time() - start

    results, elapsed = asyncio.run(main())
    assert results == [3, 3, 3]
    assert 0.04 <= elapsed < 1.0


def test_wrong_length_and_exceptions_reach_every_caller_and_the_batcher_goes_on() -> None:
    async def model(items: list) -> list:
        if "boom" in items:
            raise RuntimeError("model failed")
        return items[:-1] if "short" in items else items

    async def main() -> list:
        batcher = Batcher(model, "backend b", max_batch_size=2, batch_wait_timeout_s=0.01)
        outcomes = []
        for batch in (["short", "x"], ["boom", "y"], ["ok", "fine"]):
            outcomes.append(await asyncio.gather(*(batcher.submit(i) for i in batch), return_exceptions=True))
        return outcomes

    short, boom, ok = asyncio.run(main())
    assert all(isinstance(e, BatchSizeError) for e in short)
    assert "got a batch of 2 requests and must return a list of 2 responses, not a list of 1" in str(short[0])
    assert all(isinstance(e, RuntimeError) and str(e) == "model failed" for e in boom)
    assert ok == ["ok", "fine"]


def test_resize_applies_to_the_next_batch() -> None:
    sizes: list[int] = []

    async def model(items: list) -> list:
        sizes.append(len(items))
        return items

    async def main() -> None:
        batcher = Batcher(model, "backend b", max_batch_size=2, batch_wait_timeout_s=0.01)
        await asyncio.gather(*(batcher.submit(i) for i in range(4)))
        batcher.resize(4, 0.01)
        await asyncio.gather(*(batcher.submit(i) for i in range(4)))

    asyncio.run(main())
    assert sizes == [2, 2, 4]


@pytest.mark.parametrize("size", [0, -3])
def test_resize_never_goes_below_one(size: int) -> None:
    batcher = Batcher(lambda items: items, "backend b")  # type: ignore[arg-type, return-value]
    batcher.resize(size, -1)
    assert (batcher.max_batch_size, batcher.batch_wait_timeout_s) == (1, 0.0)
