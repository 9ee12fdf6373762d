"""A FastAPI app under `@serve.ingress`, and a plain ASGI app, as servectl backends."""
from fastapi import FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import RedirectResponse
from pydantic import BaseModel
from ray import serve

app = FastAPI(title="items")


class Item(BaseModel):
    name: str
    price: float


@serve.ingress(app)
class ItemsApi:
    def __init__(self, version: str):
        self.version = version
        self.items: dict[int, Item] = {}

    @app.get("/items/{item_id}")
    def get_item(self, item_id: int, q: str | None = None) -> dict:
        return {"item_id": item_id, "q": q, "version": self.version}

    @app.post("/items", status_code=201)
    def create_item(self, item: Item) -> dict:
        item_id = len(self.items) + 1
        self.items[item_id] = item
        return {"id": item_id, "name": item.name, "price": item.price, "version": self.version}

    @app.get("/missing")
    def missing(self) -> dict:
        raise HTTPException(status_code=404, detail="no such thing", headers={"x-reason": "missing"})

    @app.get("/echo-headers")
    def echo_headers(self, request: Request) -> dict:
        return {"x-custom": request.headers.get("x-custom"), "root_path": request.scope.get("root_path"),
                "servectl": sorted(h for h in request.headers if h.startswith("x-servectl"))}

    @app.get("/old")
    def old(self, request: Request) -> RedirectResponse:
        return RedirectResponse(url=str(request.url_for("get_item", item_id=1)))  # public: it honours root_path

    @app.get("/")
    def root(self) -> dict:
        return {"version": self.version}

    @app.websocket("/ws")
    async def echo(self, websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_text(f"{self.version}: {await websocket.receive_text()}")
        except WebSocketDisconnect:
            pass


health_app = FastAPI()


@health_app.get("/")
def healthy() -> dict:
    return {"ok": True}
