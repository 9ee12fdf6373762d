"""A backend that takes as long as it is told (``?delay=SECONDS``); async, so a cancelled request frees it."""
import asyncio


class Slow:
    async def __call__(self, request):
        await asyncio.sleep(float(request.query_params.get("delay", 0.1)))
        return "done"
