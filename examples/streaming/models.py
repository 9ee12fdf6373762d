"""A generator backend (its chunks stream over HTTP and to handles) and a FastAPI app answering server-sent events."""
import asyncio
import time

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from ray import serve


class Counter:
    """Yields ``n`` lines, ``delay`` seconds apart; counts the streams that ended early (the client went away)."""

    def __init__(self):
        self.started = self.finished = self.stopped = 0

    def __call__(self, request):
        if request.query_params.get("stats"):
            return {"started": self.started, "finished": self.finished, "stopped": self.stopped}
        n = int(request.query_params.get("n", 3))
        delay = float(request.query_params.get("delay", 0.2))
        return self._count(n, delay)

    def _count(self, n, delay):
        self.started += 1
        complete = False
        try:
            for i in range(n):
                yield f"{i}\n"
                time.sleep(delay)
            complete = True
        finally:
            if complete:
                self.finished += 1
            else:
                self.stopped += 1


app = FastAPI()


@serve.ingress(app)
class Events:
    @app.get("/ticks")
    async def ticks(self, n: int = 3, delay: float = 0.2) -> StreamingResponse:
        async def events():
            for i in range(n):
                yield f"event: tick\ndata: {i}\n\n"
                await asyncio.sleep(delay)

        return StreamingResponse(events(), media_type="text/event-stream")
