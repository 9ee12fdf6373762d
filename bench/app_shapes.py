"""Streaming and FastAPI ingress through servectl against plain Ray Serve, measured in one run (issue #17).

On one fresh embedded cluster, the same FastAPI app (``@serve.ingress(app)``, 2 replicas) serves:

  (a) as a plain Ray Serve deployment, hit at Serve's own proxy
  (b) as a servectl backend behind an endpoint (front proxy -> Serve's proxy -> replica: ``ingress="python"``)
  (c) the same with ``LocalRay(ingress="direct")`` (front proxy -> replica; the cluster runs Serve's direct
      ingress, which leaves (a) and (b) on Serve's proxy as before)

and for each it measures, in rounds (a, b, a, b, …), the median of:

  - FastAPI throughput: a small JSON route, 16 keep-alive connections (req/s, p50, p99);
  - streaming: a ``StreamingResponse`` of 200 chunks of 1 KiB, 4 concurrent streams: time to first chunk (p50)
    and chunks per second over all streams.

Ratios are (b) and (c) over (a) (for time to first chunk, (a) over them: higher is better everywhere). Goal ≥ 0.95.

    python bench/app_shapes.py [--seconds 6] [--rounds 2] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from router_overhead import bench_cluster, deploy_plain, load, remove_plain, servectl  # noqa: E402

from servectl.providers.embedded_cluster import free_ports  # noqa: E402

APP = '''
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from ray import serve

app = FastAPI()
CHUNK = b"x" * 1023 + b"\\n"


@serve.ingress(app)
class Api:
    @app.get("/hello")
    def hello(self) -> dict:
        return {"hello": "world"}

    @app.get("/stream")
    def stream(self, n: int = 200) -> StreamingResponse:
        async def chunks():
            for _ in range(n):
                yield CHUNK
        return StreamingResponse(chunks(), media_type="text/plain")
'''
PLAIN_APP = '''
from ray import serve
from api import Api

app = serve.deployment(name="plain", num_replicas=2, ray_actor_options={"num_cpus": 0})(Api).bind()
'''
CASE = '''
from servectl import Backend, Endpoint, LocalRay, var
LocalRay(ingress=var("ingress", default="python"))
Endpoint("bench", route="/bench", backend=Backend("api", "api:Api", num_replicas=2, ray_actor_options={"num_cpus": 0}))
'''
STREAMS = '''
import asyncio, json, sys, time
import aiohttp

async def main(url, seconds, concurrency):
    first, chunks, errors = [], 0, 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        async def worker():
            nonlocal chunks, errors
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                got = 0
                try:
                    async with session.get(url) as response:
                        if response.status != 200:
                            errors += 1
                            continue
                        async for data in response.content.iter_any():
                            if got == 0:
                                first.append(time.perf_counter() - start)
                            got += len(data)
                except aiohttp.ClientError as error:
                    errors += 1
                    print(repr(error), file=sys.stderr)
                    continue
                chunks += got // 1024
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    first.sort()
    print(json.dumps({"ttfb_ms": first[len(first) // 2] * 1000 if first else float("nan"),
                      "chunks_per_s": chunks / elapsed, "streams": len(first), "errors": errors}))

asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3])))
'''


def streams(url: str, seconds: float, concurrency: int) -> dict:
    for warm in (True, False):  # a warm-up second, then the measured run
        out = subprocess.run([sys.executable, "-c", STREAMS, url, "1" if warm else str(seconds), str(concurrency)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"stream client failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def measure(base_url: str, args: argparse.Namespace) -> dict:
    fastapi = load(f"{base_url}/hello", args.seconds, 16)
    streamed = streams(f"{base_url}/stream?n=200", args.seconds, 4)
    return {"req_per_s": fastapi["throughput"], "p50_ms": fastapi["p50_ms"], "p99_ms": fastapi["p99_ms"],
            "errors": fastapi["errors"] + streamed["errors"], "ttfb_ms": streamed["ttfb_ms"],
            "chunks_per_s": streamed["chunks_per_s"]}


def run_rounds(work: Path, http_port: int, args: argparse.Namespace) -> dict[str, list[dict]]:
    from ray import serve
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    from servectl.providers.local_ray import connect

    plain_dir, case_dir = work / "plain", work / "case"
    for directory in (plain_dir, case_dir):
        directory.mkdir()
        (directory / "api.py").write_text(APP)
    (plain_dir / "plain_app.py").write_text(PLAIN_APP)
    (case_dir / "main.py").write_text(textwrap.dedent(CASE))

    connect(os.environ["SERVECTL_RAY_ADDRESS"], os.environ["SERVECTL_RAY_AUTH_TOKEN_PATH"])
    (serve_port,) = free_ports(1)
    serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
    env = upload_working_dir_if_needed({"working_dir": str(plain_dir)}, include_gitignore=False, scratch_dir=str(work))
    http = {"host": "127.0.0.1", "port": serve_port}
    results: dict[str, list[dict]] = {"a_plain_serve": [], "b_servectl": [], "c_servectl_direct": []}
    for _ in range(args.rounds):
        results["a_plain_serve"].append(measure(deploy_plain(env, http), args))
        remove_plain()
        servectl(case_dir, "apply", "--auto-approve")
        results["b_servectl"].append(measure(f"http://127.0.0.1:{http_port}/bench", args))
        servectl(case_dir, "destroy", "--auto-approve")
        servectl(case_dir, "apply", "--auto-approve", "--var", "ingress=direct")
        results["c_servectl_direct"].append(measure(f"http://127.0.0.1:{http_port}/bench", args))
        servectl(case_dir, "destroy", "--auto-approve")
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="servectl-bench-") as tmp:
        from servectl.providers.local_ray import DIRECT_INGRESS_ENV

        with bench_cluster(Path(tmp), DIRECT_INGRESS_ENV) as http_port:
            results = run_rounds(Path(tmp), http_port, args)
    medians = {case: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for case, runs in results.items()}
    plain, ours, direct = medians["a_plain_serve"], medians["b_servectl"], medians["c_servectl_direct"]
    summary = {
        "cases": medians,
        "fastapi_throughput_ratio": round(ours["req_per_s"] / plain["req_per_s"], 3),
        "stream_chunks_ratio": round(ours["chunks_per_s"] / plain["chunks_per_s"], 3),
        "stream_first_chunk_ratio": round(plain["ttfb_ms"] / ours["ttfb_ms"], 3),
        "direct_fastapi_throughput_ratio": round(direct["req_per_s"] / plain["req_per_s"], 3),
        "direct_stream_chunks_ratio": round(direct["chunks_per_s"] / plain["chunks_per_s"], 3),
        "direct_stream_first_chunk_ratio": round(plain["ttfb_ms"] / direct["ttfb_ms"], 3),
        "seconds": args.seconds, "rounds": args.rounds,
    }
    if args.json:
        print(json.dumps(summary))
        return
    print(f"{'case':<20}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'TTFB ms':>9}{'chunks/s':>10}{'errors':>8}")
    for case, m in medians.items():
        print(f"{case:<20}{m['req_per_s']:>9.0f}{m['p50_ms']:>9.1f}{m['p99_ms']:>9.1f}{m['ttfb_ms']:>9.1f}"
              f"{m['chunks_per_s']:>10.0f}{m['errors']:>8.0f}")
    print(f"servectl / plain Serve: FastAPI req/s {summary['fastapi_throughput_ratio']:.2f}, "
          f"chunks/s {summary['stream_chunks_ratio']:.2f}, first chunk {summary['stream_first_chunk_ratio']:.2f} "
          "(higher is better; goal ≥ 0.95)")
    print(f"servectl direct / plain Serve: FastAPI req/s {summary['direct_fastapi_throughput_ratio']:.2f}, "
          f"chunks/s {summary['direct_stream_chunks_ratio']:.2f}, "
          f"first chunk {summary['direct_stream_first_chunk_ratio']:.2f}")


if __name__ == "__main__":
    main()
