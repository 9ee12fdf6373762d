class Hello:
    def __init__(self, greeting: str) -> None:
        self.greeting = greeting

    async def __call__(self, request) -> str:
        name = request.query_params.get("name", "world")
        return f"{self.greeting}, {name}!"
