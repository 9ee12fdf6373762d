"""Response shapes (issue #17, item 6), end to end through the front proxy and handles: bytes with a content type,
a file, a custom status with headers, and 50 MB each way on the default settings, byte for byte."""
from __future__ import annotations

import hashlib

import pytest
import requests

import servectl
from tests.conftest import run_cli, wait_for_http, write_config

pytestmark = pytest.mark.ray

MAIN = """
from servectl import Backend, Endpoint, LocalRay
LocalRay()
small = {"num_cpus": 0.1}
Endpoint("shapes", route="/shapes", backend=Backend("shapes", "models:Shapes", ray_actor_options=small))
Endpoint("blob", route="/blob", backend=Backend("blob", "models:Blob", ray_actor_options=small))
"""
MODELS = '''
import hashlib
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from ray import serve

app = FastAPI()
PNG = bytes.fromhex("89504e470d0a1a0a") + bytes(range(256))
REPORT = Path(__file__).with_name("report.csv")


def pattern(megabytes: int) -> bytes:
    return hashlib.sha256(b"seed").digest() * (megabytes * 32768)  # 32 bytes x 32768 = 1 MiB


@serve.ingress(app)
class Shapes:
    @app.get("/png")
    def png(self) -> Response:
        return Response(PNG, media_type="image/png")

    @app.get("/report")
    def report(self) -> FileResponse:
        return FileResponse(REPORT, filename="report.csv")

    @app.post("/teapot")
    def teapot(self) -> JSONResponse:
        return JSONResponse({"error": "short and stout"}, status_code=418, headers={"x-kettle": "on"})

    @app.get("/big")
    def big(self, mb: int = 50) -> Response:
        return Response(pattern(mb), media_type="application/octet-stream")

    @app.post("/upload")
    async def upload(self, request: Request) -> dict:
        body = await request.body()
        return {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}


class Blob:
    async def __call__(self, request):
        return pattern(int(request.query_params.get("mb", "50")))
'''


def _pattern(megabytes: int) -> bytes:
    return hashlib.sha256(b"seed").digest() * (megabytes * 32768)


def test_bytes_files_statuses_and_fifty_megabytes_each_way(ray_cluster, tmp_path, applied_dirs):
    config = write_config(tmp_path / "shapes", MAIN, models=MODELS)
    (config / "report.csv").write_text("id,total\n1,42\n")
    applied_dirs.append(config)
    applied = run_cli(config, "apply", "--auto-approve")
    assert applied.code == 0, applied.output
    url = ray_cluster.url
    wait_for_http(url("/shapes/png"))

    png = requests.get(url("/shapes/png"), timeout=30)
    assert png.headers["content-type"] == "image/png" and png.content == bytes.fromhex("89504e470d0a1a0a") + bytes(range(256))
    report = requests.get(url("/shapes/report"), timeout=30)
    assert report.text == "id,total\n1,42\n" and report.headers["content-type"].startswith("text/csv")
    assert report.headers["content-disposition"] == 'attachment; filename="report.csv"'
    teapot = requests.post(url("/shapes/teapot"), timeout=30)
    assert (teapot.status_code, teapot.json(), teapot.headers["x-kettle"]) == (418, {"error": "short and stout"}, "on")

    expected = hashlib.sha256(_pattern(50)).hexdigest()
    big = requests.get(url("/shapes/big?mb=50"), timeout=120)
    assert big.status_code == 200 and len(big.content) == 50 * 2**20
    assert hashlib.sha256(big.content).hexdigest() == expected
    plain = requests.get(url("/blob?mb=50"), timeout=120)
    assert plain.status_code == 200 and hashlib.sha256(plain.content).hexdigest() == expected
    upload = requests.post(url("/shapes/upload"), data=_pattern(50), timeout=120)
    assert upload.status_code == 200, upload.text[:300]
    assert upload.json() == {"bytes": 50 * 2**20, "sha256": expected}

    servectl.connect(str(config))
    through_handle = servectl.get_handle("blob").remote(mb=50).result(timeout_s=120)
    assert hashlib.sha256(through_handle).hexdigest() == expected
