class Echo:
    async def __call__(self, request):
        body = (await request.body()).decode()
        return {"data": request.query_params.get("data"), "body": body}
