"""The fast data path of issue #18, measured against plain Ray Serve in one run: which way servectl's traffic policy
should reach the replicas.

Two fresh embedded clusters (2 CPUs each), one after the other, the same hello handler and replica budget:

Cluster 1, Serve's direct ingress on (``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``: each replica takes HTTP on a port
of its own, Serve's Python proxy still runs):
  (a) plain Serve through its default Python proxy — the issue's baseline
  (c) servectl endpoints through the present path: front proxy -> Serve's Python proxy -> replica
  (d) the same endpoints with the front proxy going straight to the replicas: the same policy rendered with the
      replicas' addresses (``render_config(targets=…)``), Serve's proxy the backup
      — each of (c) and (d) as: single backend, 0.5/0.5 split, split + 10 % shadow, split with a shard key per
      request (100 keys)
Cluster 2, Serve's HAProxy mode on (``RAY_SERVE_ENABLE_HA_PROXY=1``: Serve runs HAProxy in front of the replicas):
  (b) plain Serve in HAProxy mode — the best Ray offers
  (e) a servectl endpoint (single) chained in front of it: front proxy -> Serve's HAProxy -> replica

Rounds are interleaved within a cluster and medians reported; (d)/(b) and (e)/(b) compare across the two clusters
(run one after the other on a shared machine: read them with that in mind). Not a timed test.

    python3 bench/fast_path.py [--seconds 6] [--connections 16] [--rounds 2] [--json]
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.router_overhead import CASES, HANDLER, PLAIN_APP, deploy_plain, remove_plain, servectl  # noqa: E402
from servectl.providers.embedded_cluster import EmbeddedCluster, free_ports  # noqa: E402

KEYED_CASES = CASES  # the split case, loaded with a shard key per request

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

asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"))
'''


def load(url: str, seconds: float, connections: int, keyed: bool = False) -> dict:
    """Warm up 1 s, then ``connections`` keep-alive clients for ``seconds`` (own process): req/s, p50/p99 ms, errors."""
    flag = "1" if keyed else "0"
    subprocess.run([sys.executable, "-c", LOAD, url, "1", str(connections), flag], capture_output=True, check=True)
    out = subprocess.run([sys.executable, "-c", LOAD, url, str(seconds), str(connections), flag],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@contextlib.contextmanager
def cluster(work: Path, env: dict[str, str]):
    """A fresh embedded cluster with ``env`` on its node, servectl pointed at it; yields (front port, record)."""
    embedded = EmbeddedCluster(str(work / "cluster"))
    record = embedded.start(num_cpus=2, num_gpus=0, resources={}, extra_env=env)
    (http_port,) = free_ports(1)
    os.environ.update(SERVECTL_RAY_ADDRESS=record.gcs_address, SERVECTL_RAY_AUTH_TOKEN_PATH=record.token_path,
                      SERVECTL_HTTP_PORT=str(http_port))
    try:
        yield http_port, record
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        embedded.stop()


@contextlib.contextmanager
def direct_proxy(work: Path, record, serve_port: int, endpoint: str):
    """A second HAProxy (our own process, stopped by its Popen handle) with the endpoint's live policy rendered
    with the replicas' direct-ingress addresses; yields its port."""
    from servectl.providers.dashboard import RayDashboard
    from servectl.providers.front_proxy import haproxy_binary, render_config, routed_endpoints
    from servectl.routing.policy import PolicyCache
    from servectl.runtime.proof import route_proof

    token = Path(record.token_path).read_text().strip()
    dashboard = RayDashboard(f"http://127.0.0.1:{record.dashboard_port}", token)
    # Replicas listen on 127.0.0.1 (Serve's http_options host); Serve lists the node's address.
    targets = {app: [("127.0.0.1", port) for _, port in replicas] for app, replicas in dashboard.replica_targets().items()}
    routed = routed_endpoints({endpoint: PolicyCache(endpoint).get()})
    (port,) = free_ports(1)
    config = render_config("127.0.0.1", port, serve_port, routed, str(work / "direct.pid"), route_proof(token), targets)
    config = config.replace("    master-worker\n", "")
    path = work / "direct.cfg"
    path.write_text(config)
    process = subprocess.Popen([haproxy_binary(), "-db", "-f", str(path)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            with contextlib.suppress(OSError):
                import urllib.request

                urllib.request.urlopen(f"http://127.0.0.1:{port}/-/healthz", timeout=1).read()
                break
            time.sleep(0.1)
        yield port, sum(len(t) for t in targets.values())
    finally:
        process.terminate()
        process.wait(timeout=10)


def prepare(work: Path) -> tuple[Path, Path]:
    plain_dir, cases_dir = work / "plain", work / "cases"
    for folder in (plain_dir, cases_dir):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "hello.py").write_text(HANDLER)
    (plain_dir / "plain_app.py").write_text(PLAIN_APP)
    (cases_dir / "main.py").write_text(textwrap.dedent(CASES))
    return plain_dir, cases_dir


def run_direct_cluster(work: Path, args: argparse.Namespace) -> dict[str, list[dict]]:
    """Cluster 1: (a), (c) and (d) in interleaved rounds."""
    from servectl.providers.local_ray import connect

    plain_dir, cases_dir = prepare(work)
    results: dict[str, list[dict]] = {"a_plain_default": []}
    with cluster(work, {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"}) as (http_port, record):
        connect(record.gcs_address, record.token_path)
        from ray import serve
        from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

        (serve_port,) = free_ports(1)
        serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
        env = upload_working_dir_if_needed({"working_dir": str(plain_dir)}, include_gitignore=False, scratch_dir=str(work))
        for _ in range(args.rounds):
            plain_url = deploy_plain(env, {"host": "127.0.0.1", "port": serve_port})
            results["a_plain_default"].append(load(plain_url, args.seconds, args.connections))
            remove_plain()
            for case, variable, keyed in (
                ("single", "single", False), ("split", "split", False), ("split_shadow", "split_shadow", False),
                ("keyed_split", "split", True),
            ):
                servectl(cases_dir, "apply", "--var", f"case={variable}", "--auto-approve")
                url = f"http://127.0.0.1:{http_port}/bench"
                results.setdefault(f"c_{case}_python", []).append(load(url, args.seconds, args.connections, keyed))
                with direct_proxy(work, record, serve_port, "bench") as (port, replicas):
                    if not replicas:
                        raise SystemExit("Serve listed no direct-ingress replica: is RAY_SERVE_ENABLE_DIRECT_INGRESS on?")
                    results.setdefault(f"d_{case}_direct", []).append(
                        load(f"http://127.0.0.1:{port}/bench", args.seconds, args.connections, keyed))
            servectl(cases_dir, "destroy", "--auto-approve")
    return results


def run_haproxy_cluster(work: Path, args: argparse.Namespace) -> dict[str, list[dict]]:
    """Cluster 2: (b) and (e) in interleaved rounds."""
    from servectl.providers.local_ray import connect

    plain_dir, cases_dir = prepare(work)
    results: dict[str, list[dict]] = {"b_plain_haproxy": [], "e_single_chained": []}
    with cluster(work, {"RAY_SERVE_ENABLE_HA_PROXY": "1"}) as (http_port, record):
        connect(record.gcs_address, record.token_path)
        from ray import serve
        from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

        (serve_port,) = free_ports(1)
        serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
        env = upload_working_dir_if_needed({"working_dir": str(plain_dir)}, include_gitignore=False, scratch_dir=str(work))
        for _ in range(args.rounds):
            plain_url = deploy_plain(env, {"host": "127.0.0.1", "port": serve_port})
            results["b_plain_haproxy"].append(load(plain_url, args.seconds, args.connections))
            remove_plain()
            servectl(cases_dir, "apply", "--var", "case=single", "--auto-approve")
            results["e_single_chained"].append(load(f"http://127.0.0.1:{http_port}/bench", args.seconds, args.connections))
            servectl(cases_dir, "destroy", "--auto-approve")
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="servectl-fast-") as tmp:
        results.update(run_direct_cluster(Path(tmp) / "direct", args))
    with tempfile.TemporaryDirectory(prefix="servectl-fast-") as tmp:
        results.update(run_haproxy_cluster(Path(tmp) / "haproxy", args))

    medians = {case: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for case, runs in results.items()}
    default, haproxy = medians["a_plain_default"], medians["b_plain_haproxy"]
    summary = {
        "cases": medians,
        "over_default": {case: round(m["throughput"] / default["throughput"], 2) for case, m in medians.items()},
        "over_haproxy": {case: round(m["throughput"] / haproxy["throughput"], 2) for case, m in medians.items()},
        "p50_over_default": {case: round(m["p50_ms"] / default["p50_ms"], 2) for case, m in medians.items()},
        "seconds": args.seconds, "connections": args.connections, "rounds": args.rounds,
    }
    if args.json:
        print(json.dumps(summary))
        return
    print(f"{'case':<24}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'/default':>10}{'/haproxy':>10}{'p50/def':>9}")
    for case, m in medians.items():
        print(f"{case:<24}{m['throughput']:>9.0f}{m['p50_ms']:>9.1f}{m['p99_ms']:>9.1f}{m['errors']:>8.0f}"
              f"{summary['over_default'][case]:>10.2f}{summary['over_haproxy'][case]:>10.2f}"
              f"{summary['p50_over_default'][case]:>9.2f}")


if __name__ == "__main__":
    main()
