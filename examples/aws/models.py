class Vision:
    async def __call__(self, request) -> dict:
        return {"model": "vision", "path": request.url.path}


class Text:
    async def __call__(self, request) -> dict:
        return {"model": "text", "length": len(await request.body())}
