"""What servectl's data path costs against plain Ray Serve — its default proxy and its HAProxy mode — in one run.

Two fresh embedded clusters (2 CPUs each), both up for the whole run, the same async hello handler, 2 serving
replicas in every case, 16 keep-alive connections from an aiohttp client in its own process:

  cluster D — Serve's direct ingress on, as servectl's own embedded head starts:
    serve_default          plain Serve deployment at Serve's default Python proxy (the issue's baseline)
    single                 servectl endpoint, one backend, on the fast path (front proxy -> replicas)
    split                  0.5/0.5 split over two backends
    split_shadow           the split plus a 0.1 shadow to a third backend
    keyed_split            the split, each request carrying one of 1,000 shard keys
    split_slow_shadow      the split plus a 0.1 shadow to a backend that sleeps 1 s: its callers' p99 against the
                           split's, and every copy counted at the shadow (servectl's own series)
    handle_plain, handle_single, handle_split, handle_split_shadow
                           16 concurrent handle calls from a driver process: a plain DeploymentHandle against
                           servectl's handles to the endpoints
  cluster H — RAY_SERVE_ENABLE_HA_PROXY=1 (Ray 2.60's HAProxy mode: HAProxy in front of the replicas):
    serve_haproxy          plain Serve deployment at Serve's HAProxy — the best Ray offers

Every case runs once per round (rounds interleave them; the other cluster idles meanwhile, for every case alike)
and the medians are reported, with each HTTP case's throughput as a ratio to both baselines
(``*_vs_serve_default``, ``*_vs_serve_haproxy``), its p50 as a fraction of the default's, and the CPU seconds
the serving side spent per 1,000 requests (every process of the case's cluster and servectl's front proxy; the
load generator excluded; handle cases include their calling driver, which does the routing). Not a timed test.

    python3 bench/router_overhead.py [--seconds 8] [--connections 16] [--rounds 3] [--json]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Iterator, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
LocalRay(ingress=var("ingress", default="direct"))  # the fast path, servectl's default; "python": the fallback
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
        # ~100 copies a second that take 1 s each: room for all of them in flight, so every one is delivered
        shadow = {Backend("slow_shadow", "hello:Slow", ray_actor_options=free, max_concurrent_queries=1000): 0.1}
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
                headers = {"x-serve-shard-key": f"user-{random.randrange(1000)}"} if keyed else {}
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


class CpuMeter:
    """CPU seconds spent by the processes of some sessions (a cluster's, the front proxy's) between two readings.

    Everything servectl and the embedded cluster start leads a session of its own, and their children stay in
    it (Ray's workers, Serve's HAProxy, HAProxy's workers). Read from /proc: a process that ends between two
    readings loses what it spent since the first (none does during a load window here).
    """

    TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")

    def __init__(self, sessions: set[int]) -> None:
        self.sessions = sessions

    def read(self) -> dict[int, float]:
        """CPU seconds so far (user + system) of every live process in the sessions, by PID."""
        spent = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) in self.sessions:
                spent[int(entry.name)] = (int(fields[11]) + int(fields[12])) * self.TICK_S
        return spent

    @staticmethod
    def between(before: dict[int, float], after: dict[int, float]) -> float:
        """CPU seconds spent from ``before`` to ``after`` (a process born between counts whole)."""
        return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def handle_load(kind: str, name: str, seconds: float, concurrency: int, meter: Optional[CpuMeter] = None) -> dict:
    """``concurrency`` concurrent handle calls for ``seconds`` from a driver process of their own (``kind``
    "plain": a DeploymentHandle to app ``name``; else servectl's handle to endpoint ``name``): req/s, p50/p99
    ms, errors, and with ``meter`` the CPU seconds per 1,000 calls of the cluster and the calling driver."""
    before, children = (meter.read() if meter else {}), _children_cpu_s()
    out = subprocess.run(
        [sys.executable, "-c", HANDLE_LOAD, kind, name, str(seconds), str(concurrency)],
        capture_output=True, text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"handle load failed: {out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if meter:
        spent = CpuMeter.between(before, meter.read()) + _children_cpu_s() - children
        result["cpu_s_per_1000"] = spent / max(1.0, result["throughput"] * seconds) * 1000
    return result


def load(url: str, seconds: float, connections: int, keyed: bool = False, meter: Optional[CpuMeter] = None) -> dict:
    """Warm up 1 s (connections, replica caches), then ``connections`` keep-alive clients for ``seconds`` in a
    process of their own (with ``keyed``, each request carries one of 1,000 shard keys: 100 hash 47/53 onto a
    0.5/0.5 split, which measured the key set's skew, not the routing): req/s, p50/p99 ms,
    errors, and with ``meter`` the CPU seconds its sessions spent per 1,000 answered requests."""
    flag = ["keyed"] if keyed else []
    subprocess.run([sys.executable, "-c", LOAD, url, "1", str(connections), *flag], capture_output=True, check=True)
    before = meter.read() if meter else {}
    out = subprocess.run([sys.executable, "-c", LOAD, url, str(seconds), str(connections), *flag],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    if meter:
        result["cpu_s_per_1000"] = CpuMeter.between(before, meter.read()) / max(1.0, result["throughput"] * seconds) * 1000
    return result


def servectl(config: Path, *args: str) -> None:
    """Run the servectl CLI on config dir ``config``; exit the bench with its output when it fails."""
    proc = subprocess.run([sys.executable, "-m", "servectl.cli", "-C", str(config), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"servectl {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")


@contextlib.contextmanager
def bench_cluster(work: Path, extra_env: Optional[dict[str, str]] = None) -> Iterator[int]:
    """A fresh embedded cluster (``extra_env`` on its node) with servectl pointed at it; yields the front proxy's
    HTTP port."""
    with started(work, extra_env) as (http_port, _record):
        yield http_port


@contextlib.contextmanager
def started(work: Path, extra_env: Optional[dict[str, str]] = None, point: bool = True):
    """A fresh embedded cluster with ``extra_env`` on its node; yields (a free HTTP port, its record). With
    ``point``, servectl (``SERVECTL_*`` in this process's environment, which its CLI runs inherit) uses it."""
    cluster = EmbeddedCluster(str(work / "cluster"))
    record = cluster.start(num_cpus=2, num_gpus=0, resources={}, extra_env=extra_env)
    (http_port,) = free_ports(1)
    if point:
        os.environ.update(
            SERVECTL_RAY_ADDRESS=record.gcs_address,
            SERVECTL_RAY_AUTH_TOKEN_PATH=record.token_path,
            SERVECTL_HTTP_PORT=str(http_port),
        )
    try:
        yield http_port, record
    finally:
        import ray

        if point and ray.is_initialized():  # a driver left connected is ended by Ray a minute after its cluster stops
            ray.shutdown()
        cluster.stop()


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
    """Delete every plain Serve app and wait (at most 120 s) until none is left."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    client = _get_global_client()
    client.deploy_apps(ServeDeploySchema(applications=[], http_options={"host": "127.0.0.1", "port": client.http_config.port}))
    deadline = time.time() + 120
    while serve.status().applications:
        if time.time() > deadline:
            raise SystemExit("plain Serve apps were not deleted in 120 s")
        time.sleep(0.5)


HAPROXY_PLAIN = '''
import json, sys, time, urllib.request
from servectl.providers.local_ray import connect
connect(sys.argv[1], sys.argv[2])
from ray import serve
from ray._private.runtime_env.working_dir import upload_working_dir_if_needed
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeDeploySchema
serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[4])})
env = upload_working_dir_if_needed({"working_dir": sys.argv[3]}, include_gitignore=False, scratch_dir=sys.argv[5])
_get_global_client().deploy_apps(ServeDeploySchema(applications=[{
    "name": "plain", "route_prefix": "/plain", "import_path": "plain_app:app", "runtime_env": env,
}], http_options={"host": "127.0.0.1", "port": int(sys.argv[4])}))
deadline = time.time() + 120
while time.time() < deadline:
    try:
        if urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[4]}/plain", timeout=2).status == 200:
            print("ready"); break
    except OSError:
        pass
    time.sleep(0.5)
'''


def deploy_plain_elsewhere(record, plain_dir: Path, work: Path) -> str:
    """Deploy the plain app on the cluster of ``record`` from a driver process of its own (this one is connected
    to the other cluster; Ray allows one per process) and return its URL; Serve keeps it after the driver ends."""
    (port,) = free_ports(1)
    out = subprocess.run([sys.executable, "-c", HAPROXY_PLAIN, record.gcs_address, record.token_path, str(plain_dir),
                          str(port), str(work)], capture_output=True, text=True, timeout=300)
    if "ready" not in out.stdout:
        raise SystemExit(f"plain Serve in HAProxy mode did not start:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return f"http://127.0.0.1:{port}/plain"


def delivered(metrics_url: str, before: dict[str, float], deadline_s: float = 90.0) -> dict[str, float]:
    """Wait (at most ``deadline_s``) until the slow shadow's counts since ``before`` (``shadow_counts``) have not
    changed for 3 s — each Ray process exports its own on its own 1-s cycle, the primaries' sent count can trail
    the shadow's — and return them: copies sent, received, failed."""
    started_at, last, stable_since = time.time(), None, time.time()
    while time.time() - started_at < deadline_s:
        now = shadow_counts(metrics_url)
        counts = {key: now[key] - before.get(key, 0.0) for key in now}
        if counts != last:
            last, stable_since = counts, time.time()
        elif counts["sent"] > 0 and time.time() - stable_since >= 3:
            break
        time.sleep(0.5)
    return last or {}


def shadow_counts(metrics_url: str) -> dict[str, float]:
    """servectl's own series for backend slow_shadow on the node's metrics endpoint: copies the primaries sent,
    copies it received, copies it failed."""
    import urllib.request

    from servectl.engine.prometheus import Scrape, parse

    with urllib.request.urlopen(metrics_url, timeout=10) as answer:
        scrape = Scrape(parse(answer.read().decode()))
    return {
        "sent": scrape.total("ray_servectl_shadow_sent_total", backend="slow_shadow"),
        "received": scrape.total("ray_servectl_requests_total", backend="slow_shadow", role="shadow"),
        "errors": scrape.total("ray_servectl_errors_total", backend="slow_shadow"),
    }


def prepare(work: Path) -> tuple[Path, Path]:
    """Write the plain app's and the servectl cases' directories under ``work``: (plain dir, cases dir)."""
    plain_dir, cases_dir = work / "plain", work / "cases"
    for folder in (plain_dir, cases_dir):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "hello.py").write_text(HANDLER)
    (plain_dir / "plain_app.py").write_text(PLAIN_APP)
    (cases_dir / "main.py").write_text(textwrap.dedent(CASES))
    return plain_dir, cases_dir


HTTP_CASES = (  # (case, the config's case, keyed)
    ("single", "single", False), ("split", "split", False), ("split_shadow", "split_shadow", False),
    ("keyed_split", "split", True), ("split_slow_shadow", "split_slow_shadow", False),
)


def run_rounds(work: Path, args: argparse.Namespace) -> tuple[dict[str, list[dict]], list[dict[str, float]]]:
    """Both clusters up, every case once per round: (results by case, the slow shadow's counts per round)."""
    from ray import serve
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    from servectl.providers.front_proxy import FrontProxy
    from servectl.providers.embedded_cluster import RUNTIME_DIR
    from servectl.providers.local_ray import DIRECT_INGRESS_ENV, connect

    plain_dir, cases_dir = prepare(work)
    only = set(filter(None, args.only.split(",")))
    results: dict[str, list[dict]] = {}
    copies: list[dict[str, float]] = []
    with started(work / "h", {"RAY_SERVE_ENABLE_HA_PROXY": "1"}, point=False) as (_, h_record), \
            started(work / "d", DIRECT_INGRESS_ENV) as (http_port, d_record):
        haproxy_url = deploy_plain_elsewhere(h_record, plain_dir, work)
        h_meter = CpuMeter({h_record.pid})
        connect(d_record.gcs_address, d_record.token_path)
        (serve_port,) = free_ports(1)
        serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
        env = upload_working_dir_if_needed({"working_dir": str(plain_dir)}, include_gitignore=False,
                                           scratch_dir=str(work))
        metrics_url = f"http://127.0.0.1:{d_record.metrics_port}/metrics"
        for round_number in range(args.rounds):
            d_meter = CpuMeter({d_record.pid})
            results.setdefault("serve_haproxy", []).append(load(haproxy_url, args.seconds, args.connections,
                                                                meter=h_meter))
            plain_url = deploy_plain(env, {"host": "127.0.0.1", "port": serve_port})
            results.setdefault("serve_default", []).append(load(plain_url, args.seconds, args.connections,
                                                                meter=d_meter))
            if not only:
                results.setdefault("handle_plain", []).append(
                    handle_load("plain", "plain", args.seconds, args.connections, d_meter))
            remove_plain()
            for case, variable, keyed in HTTP_CASES:
                if only and case not in only:
                    continue
                servectl(cases_dir, "apply", "--var", f"case={variable}", "--var", f"ingress={args.ingress}",
                         "--auto-approve")
                # The front proxy leads a session of its own from the first apply on (its master's PID).
                master = FrontProxy(str(cases_dir / RUNTIME_DIR)).master_pid()
                d_meter = CpuMeter({d_record.pid, *([master] if master else [])})
                before = shadow_counts(metrics_url) if case == "split_slow_shadow" else {}
                results.setdefault(case, []).append(
                    load(f"http://127.0.0.1:{http_port}/bench", args.seconds, args.connections, keyed, d_meter))
                if case == "split_slow_shadow":
                    copies.append(delivered(metrics_url, before))
                if case in ("single", "split", "split_shadow") and not only:
                    results.setdefault(f"handle_{case}", []).append(
                        handle_load("servectl", "bench", args.seconds, args.connections, d_meter))
            servectl(cases_dir, "destroy", "--auto-approve")
            print(f"round {round_number + 1} of {args.rounds} done", file=sys.stderr)
    return results, copies


def summarise(results: dict[str, list[dict]], copies: list[dict[str, float]], args: argparse.Namespace) -> dict:
    """Medians per case, and every ratio the issue's goals name."""
    medians = {case: {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
               for case, runs in results.items()}
    default, haproxy = medians.get("serve_default"), medians.get("serve_haproxy")
    summary: dict = {"cases": medians}
    for case, m in medians.items():
        if case.startswith("serve_") or case.startswith("handle_"):
            continue
        summary[f"{case}_vs_serve_default"] = round(m["throughput"] / default["throughput"], 3)
        summary[f"{case}_vs_serve_haproxy"] = round(m["throughput"] / haproxy["throughput"], 3)
        summary[f"{case}_p50_vs_serve_default"] = round(m["p50_ms"] / default["p50_ms"], 3)
    summary["serve_haproxy_vs_serve_default"] = round(haproxy["throughput"] / default["throughput"], 3)
    if "split_slow_shadow" in medians and "split" in medians:
        summary["slow_shadow_p99_vs_split"] = round(medians["split_slow_shadow"]["p99_ms"] / medians["split"]["p99_ms"], 3)
        summary["slow_shadow_copies"] = copies
        summary["slow_shadow_all_delivered"] = all(c["received"] >= c["sent"] > 0 and not c["errors"] for c in copies)
    for case in ("handle_single", "handle_split", "handle_split_shadow"):
        if case in medians:
            summary[f"{case}_vs_handle_plain"] = round(medians[case]["throughput"] / medians["handle_plain"]["throughput"], 3)
    summary.update(seconds=args.seconds, connections=args.connections, rounds=args.rounds, ingress=args.ingress)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ingress", choices=("direct", "python"), default="direct",
                        help="servectl's data path: the fast path (default) or the fallback through Serve's proxy")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated servectl HTTP cases to run (e.g. split,split_shadow)")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 20 or not 1 <= args.seconds <= 120 or not 1 <= args.connections <= 512:
        raise SystemExit("--rounds 1-20, --seconds 1-120, --connections 1-512")

    with tempfile.TemporaryDirectory(prefix="servectl-bench-") as tmp:
        summary = summarise(*run_rounds(Path(tmp), args), args)
    if args.json:
        print(json.dumps(summary))
        return
    print(f"{'case':<20}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'cpu s/1k':>10}{'/default':>10}{'/haproxy':>10}")
    for case, m in summary["cases"].items():
        print(f"{case:<20}{m['throughput']:>9.0f}{m['p50_ms']:>9.1f}{m['p99_ms']:>9.1f}{m['errors']:>8.0f}"
              f"{m.get('cpu_s_per_1000', float('nan')):>10.2f}"
              f"{summary.get(f'{case}_vs_serve_default', float('nan')):>10.2f}"
              f"{summary.get(f'{case}_vs_serve_haproxy', float('nan')):>10.2f}")
    for key, value in summary.items():
        if key != "cases" and not key.endswith(("_vs_serve_default", "_vs_serve_haproxy")):
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
