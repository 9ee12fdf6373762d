class Named:
    """Answers with its backend's name, so a client can see which backend served it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, request) -> str:
        return f"served by {self.name}"
