"""What servectl's traffic routing costs over plain Ray Serve, measured in one run.

On one fresh embedded cluster, with the same hello handler and the same total
replica budget (2 replicas), it measures HTTP throughput and p50/p99 latency of:

  (a) a plain Ray Serve deployment on a route, hit at Serve's own proxy
  (b) a servectl endpoint with a single backend (through the front proxy)
  (c) a servectl endpoint with a 0.5/0.5 split over two backends
  (d) the split plus a 0.1 shadow to a third backend
  (e) the split plus a 0.1 shadow to a backend that sleeps 1 s per request

and (a)–(d) again through handles (a plain DeploymentHandle; servectl handles
to the endpoints), and prints each as a ratio to (a) (handles: to plain (a)). Cases run in rounds (a, b, c, a, b, c, …)
and the median per case is reported, since the machine is shared and noisy.

    python bench/router_overhead.py [--seconds 8] [--connections 16] [--rounds 2] [--json]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Optional


from servectl.providers.embedded_cluster import EmbeddedCluster, free_ports  # noqa: E402

HANDLER = '''
class Hello:
    def __init__(self, name="hello"):
        self.name = name

    async def __call__(self, request):
        return "hello"


class Slow:
    async def __call__(self, request):
        import asyncio
        await asyncio.sleep(1)
        return "slow"
'''
PLAIN_APP = '''
from ray import serve
from hello import Hello

app = serve.deployment(name="plain", num_replicas=2, ray_actor_options={"num_cpus": 0})(Hello).bind()
'''
CASES = '''
from servectl import Backend, Endpoint, LocalRay, var
LocalRay(ingress="python")  # through Serve's proxy, as measured before #18's default
case = var("case", default="single")
free = {"num_cpus": 0}
if case == "single":
    b = Backend("single", "hello:Hello", num_replicas=2, ray_actor_options=free)
    Endpoint("bench", route="/bench", backend=b)
else:
    b1 = Backend("half1", "hello:Hello", ray_actor_options=free)
    b2 = Backend("half2", "hello:Hello", ray_actor_options=free)
    shadow = {}
    if case == "split_shadow":
        shadow = {Backend("shadow", "hello:Hello", ray_actor_options=free): 0.1}
    if case == "split_slow_shadow":
        shadow = {Backend("slow_shadow", "hello:Slow", ray_actor_options=free): 0.1}
    Endpoint("bench", route="/bench", traffic={b1: 0.5, b2: 0.5}, shadow=shadow)
'''

LOAD = '''
import asyncio, json, random, sys, time
import aiohttp

async def main(url, seconds, connections, keyed):
    latencies, errors = [], 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker():
            nonlocal errors
            while time.perf_counter() < deadline:
                headers = {"x-serve-shard-key": f"user-{random.randrange(100)}"} if keyed else {}
                start = time.perf_counter()
                try:
                    async with session.get(url, headers=headers) as response:
                        await response.read()
                        if response.status != 200:
                            errors += 1
                            continue
                except aiohttp.ClientError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - start)
        await asyncio.gather(*(worker() for _ in range(connections)))
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")
    print(json.dumps({"throughput": len(latencies) / seconds, "p50_ms": pick(0.5) * 1000,
                      "p99_ms": pick(0.99) * 1000, "errors": errors}))

asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4:] == ["keyed"]))
'''


HANDLE_LOAD = '''
import asyncio, json, os, sys, time
from servectl.providers.local_ray import connect
connect(os.environ["SERVECTL_RAY_ADDRESS"], os.environ["SERVECTL_RAY_AUTH_TOKEN_PATH"])
import servectl
from ray import serve

async def main(kind, name, seconds, concurrency):
    if kind == "plain":
        handle = serve.get_deployment_handle(name, app_name=name)
        call = lambda: handle.remote(None)
    else:
        handle = servectl.get_handle(name, sync=False)
        call = lambda: handle.remote()
    await call()
    latencies = []
    deadline = time.perf_counter() + seconds
    async def worker():
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    print(json.dumps({"throughput": len(latencies) / seconds, "p50_ms": pick(0.5) * 1000,
                      "p99_ms": pick(0.99) * 1000, "errors": 0}))

asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))
'''


def handle_load(kind: str, name: str, seconds: float, concurrency: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", HANDLE_LOAD, kind, name, str(seconds), str(concurrency)],
        capture_output=True, text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"handle load failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def load(url: str, seconds: float, connections: int, keyed: bool = False) -> dict:
    """Warm up 1 s (connections, replica caches), then ``connections`` keep-alive clients for ``seconds`` in a
    process of their own (with ``keyed``, each request carries one of 100 shard keys): req/s, p50/p99 ms, errors."""
    flag = ["keyed"] if keyed else []
    subprocess.run([sys.executable, "-c", LOAD, url, "1", str(connections), *flag], capture_output=True, check=True)
    out = subprocess.run([sys.executable, "-c", LOAD, url, str(seconds), str(connections), *flag],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def servectl(config: Path, *args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "servectl.cli", "-C", str(config), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"servectl {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")


@contextlib.contextmanager
def bench_cluster(work: Path, extra_env: Optional[dict[str, str]] = None):
    """A fresh embedded cluster (``extra_env`` on its node) with servectl pointed at it; yields the front proxy's
    HTTP port."""
    cluster = EmbeddedCluster(str(work / "cluster"))
    record = cluster.start(num_cpus=2, num_gpus=0, resources={}, extra_env=extra_env)
    (http_port,) = free_ports(1)
    os.environ.update(
        SERVECTL_RAY_ADDRESS=record.gcs_address,
        SERVECTL_RAY_AUTH_TOKEN_PATH=record.token_path,
        SERVECTL_HTTP_PORT=str(http_port),
    )
    try:
        yield http_port
    finally:
        import ray

        if ray.is_initialized():  # a driver left connected is ended by Ray a minute after its cluster stops
            ray.shutdown()
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated servectl cases to run (e.g. c_split,d_split_shadow)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="servectl-bench-") as tmp:
        with bench_cluster(Path(tmp)) as http_port:
            results = run_rounds(Path(tmp), http_port, args)

    medians = {case: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for case, runs in results.items() if runs}
    if len(medians) < len(results):
        for case, m in medians.items():
            print(f"{case:<22}{m['throughput']:>10.0f}{m['p50_ms']:>10.1f}{m['p99_ms']:>10.1f}")
        return
    base = medians["a_plain_serve"]
    ratio = lambda case, key="throughput", to="a_plain_serve": round(medians[case][key] / medians[to][key], 3)
    summary = {
        "cases": medians,
        "single_throughput_ratio": ratio("b_single"),
        "split_throughput_ratio": ratio("c_split"),
        "split_shadow_throughput_ratio": ratio("d_split_shadow"),
        "slow_shadow_throughput_ratio": ratio("e_split_slow_shadow"),
        "slow_shadow_p99_ratio": ratio("e_split_slow_shadow", "p99_ms", "c_split"),
        "handle_single_throughput_ratio": ratio("b_handle_single", to="a_handle_plain"),
        "handle_split_throughput_ratio": ratio("c_handle_split", to="a_handle_plain"),
        "handle_split_shadow_throughput_ratio": ratio("d_handle_split_shadow", to="a_handle_plain"),
        "seconds": args.seconds,
        "connections": args.connections,
        "rounds": args.rounds,
    }
    if args.json:
        print(json.dumps(summary))
        return
    print(f"{'case':<22}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}{'ratio':>8}")
    for case, m in medians.items():
        reference = medians["a_handle_plain"] if "handle" in case else base
        print(f"{case:<22}{m['throughput']:>10.0f}{m['p50_ms']:>10.1f}{m['p99_ms']:>10.1f}{m['errors']:>8.0f}"
              f"{m['throughput'] / reference['throughput']:>8.2f}")
    print(f"slow shadow p99 over split p99: {summary['slow_shadow_p99_ratio']:.2f}")


def deploy_plain(env: dict, http: dict) -> str:
    """Deploy ``plain_app:app`` (from the uploaded ``env`` working dir) as plain Serve's app "plain" at /plain, wait
    (at most 120 s) until Serve's proxy routes it, and return its URL. Serve keeps the HTTP options it was started
    with (servectl's, once an apply has run): the URL is on the port Serve's proxy actually listens on."""
    import urllib.request

    from ray import serve
    from ray.serve.context import _disconnect, _get_global_client
    from ray.serve.schema import ServeDeploySchema

    _disconnect()  # the client of a Serve that `servectl destroy` shut down is stale
    serve.start(http_options=http)
    client = _get_global_client()
    port = client.http_config.port
    client.deploy_apps(ServeDeploySchema(applications=[{
        "name": "plain", "route_prefix": "/plain", "import_path": "plain_app:app", "runtime_env": env,
    }], http_options={**http, "port": port}))
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/routes", timeout=2) as answer:
                if b"/plain" in answer.read():
                    time.sleep(1)
                    return f"http://127.0.0.1:{port}/plain"
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("plain Serve app did not start")


def remove_plain() -> None:
    """Delete every plain Serve app and wait until none is left."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    client = _get_global_client()
    client.deploy_apps(ServeDeploySchema(applications=[], http_options={"host": "127.0.0.1", "port": client.http_config.port}))
    while serve.status().applications:
        time.sleep(0.5)


def run_rounds(work: Path, http_port: int, args: argparse.Namespace) -> dict[str, list[dict]]:
    from servectl.providers.local_ray import connect

    plain_dir = work / "plain"
    plain_dir.mkdir()
    (plain_dir / "hello.py").write_text(HANDLER)
    (plain_dir / "plain_app.py").write_text(PLAIN_APP)
    cases_dir = work / "cases"
    cases_dir.mkdir()
    (cases_dir / "main.py").write_text(textwrap.dedent(CASES))
    (cases_dir / "hello.py").write_text(HANDLER)

    connect(os.environ["SERVECTL_RAY_ADDRESS"], os.environ["SERVECTL_RAY_AUTH_TOKEN_PATH"])
    from ray import serve
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    (serve_port,) = free_ports(1)
    serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
    env = upload_working_dir_if_needed({"working_dir": str(plain_dir)}, include_gitignore=False, scratch_dir=str(work))

    results: dict[str, list[dict]] = {
        name: [] for name in (
            "a_plain_serve", "b_single", "c_split", "d_split_shadow", "e_split_slow_shadow",
            "a_handle_plain", "b_handle_single", "c_handle_split", "d_handle_split_shadow",
        )
    }
    for _ in range(args.rounds):
        plain_url = deploy_plain(env, {"host": "127.0.0.1", "port": serve_port})
        results["a_plain_serve"].append(load(plain_url, args.seconds, args.connections))
        if not args.only:
            results["a_handle_plain"].append(handle_load("plain", "plain", args.seconds, args.connections))
        remove_plain()

        for case, variable in (
            ("b_single", "single"), ("c_split", "split"), ("d_split_shadow", "split_shadow"),
            ("e_split_slow_shadow", "split_slow_shadow"),
        ):
            if args.only and case not in args.only.split(","):
                continue
            servectl(cases_dir, "apply", "--var", f"case={variable}", "--auto-approve")
            results[case].append(load(f"http://127.0.0.1:{http_port}/bench", args.seconds, args.connections))
            if case in ("b_single", "c_split", "d_split_shadow") and not args.only:
                handle_case = case[:2] + "handle_" + case[2:]
                results[handle_case].append(handle_load("servectl", "bench", args.seconds, args.connections))
        servectl(cases_dir, "destroy", "--auto-approve")
    return results


if __name__ == "__main__":
    main()
