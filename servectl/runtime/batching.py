"""Request batching inside a replica: collect requests while the previous batch runs.

Ray Serve 2.60's ``@serve.batch`` forms the next batch as soon as requests
arrive and then queues whole batches behind ``max_concurrent_batches``, so a
model slower than the arrival gap runs batch after batch of two or three
requests while the rest wait (measured: batches of ~2 under 64 concurrent
clients, and no throughput gain at batch 32; see bench/README.md). Ray Serve
1.x, which the seed describes, formed a batch only when the model was free to
run it. This batcher does that: one batch runs at a time, and everything that
queued meanwhile, up to ``max_batch_size``, goes into the next one.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional

BatchFunction = Callable[[list], Awaitable[list]]


class BatchSizeError(ValueError):
    """The user's batch function returned something other than one response per request."""


@dataclass
class Batcher:
    """One replica's batcher: runs ``run`` on one batch at a time, as Ray Serve 1.x batched.

    Each batch takes what queued while the previous one ran, up to ``max_batch_size`` items, waiting at
    most ``batch_wait_timeout_s`` seconds for more; ``run`` gets the list of items and must return a list
    of as many responses. ``describe`` (e.g. ``backend NAME``) names the backend in BatchSizeError messages.
    """

    run: BatchFunction
    describe: str
    max_batch_size: int = 1
    batch_wait_timeout_s: float = 0.0
    _queue: Optional[asyncio.Queue] = field(default=None, init=False)
    _task: Optional[asyncio.Task] = field(default=None, init=False)

    def resize(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        """Takes effect from the next batch; the batch running now keeps its size."""
        self.max_batch_size = max(1, int(max_batch_size))
        self.batch_wait_timeout_s = max(0.0, float(batch_wait_timeout_s))

    async def submit(self, item: Any) -> Any:
        """Queue ``item`` for the next batch and return its response (``run``'s result at its index).

        Starts the batch loop on the running event loop when none runs. Raises what ``run`` raised for the
        whole batch, or BatchSizeError when ``run`` returns other than one response per item.
        """
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._serve_batches())
        future: asyncio.Future = loop.create_future()
        assert self._queue is not None
        self._queue.put_nowait((item, future))
        return await future

    async def _next_batch(self) -> list[tuple[Any, asyncio.Future]]:
        assert self._queue is not None
        queue = self._queue
        batch = [await queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_wait_timeout_s
        while len(batch) < self.max_batch_size:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        # A caller that went away (client disconnect) is not worth computing for.
        return [(item, future) for item, future in batch if not future.done()]

    async def _serve_batches(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            items = [item for item, _ in batch]
            try:
                results = await self.run(items)
                if not isinstance(results, list) or len(results) != len(items):
                    got = f"a list of {len(results)}" if isinstance(results, list) else type(results).__name__
                    raise BatchSizeError(
                        f"{self.describe}: __call__ got a batch of {len(items)} requests and must return a list of "
                        f"{len(items)} responses, not {got}"
                    )
            except Exception as error:  # every caller in the batch gets the batch's error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
