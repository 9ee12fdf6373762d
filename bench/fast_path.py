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
      request (1,000 keys), split + 10 % shadow to a backend that sleeps 1 s (its callers' p99 against the split's)
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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.router_overhead import deploy_plain, load, prepare, remove_plain, servectl  # noqa: E402
from servectl.providers.embedded_cluster import EmbeddedCluster, free_ports  # noqa: E402

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


def start_serve(work: Path, record, plain_dir: Path) -> tuple[int, dict]:
    """Connect, start Serve on a free port (servectl adopts it) and upload the plain app: (Serve's port, its env)."""
    from ray import serve
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    from servectl.providers.local_ray import connect

    connect(record.gcs_address, record.token_path)
    (serve_port,) = free_ports(1)
    serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
    return serve_port, upload_working_dir_if_needed({"working_dir": str(plain_dir)}, include_gitignore=False,
                                                    scratch_dir=str(work))


def run_direct_cluster(work: Path, args: argparse.Namespace) -> dict[str, list[dict]]:
    """Cluster 1: (a), (c) and (d) in interleaved rounds."""
    from servectl.providers.local_ray import DIRECT_INGRESS_ENV

    plain_dir, cases_dir = prepare(work)
    results: dict[str, list[dict]] = {"a_plain_default": []}
    with cluster(work, DIRECT_INGRESS_ENV) as (http_port, record):
        serve_port, env = start_serve(work, record, plain_dir)
        for _ in range(args.rounds):
            plain_url = deploy_plain(env, {"host": "127.0.0.1", "port": serve_port})
            results["a_plain_default"].append(load(plain_url, args.seconds, args.connections))
            remove_plain()
            for case, variable, keyed in (
                ("single", "single", False), ("split", "split", False), ("split_shadow", "split_shadow", False),
                ("keyed_split", "split", True), ("split_slow_shadow", "split_slow_shadow", False),
            ):
                servectl(cases_dir, "apply", "--var", f"case={variable}", "--var", "ingress=python", "--auto-approve")
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
    plain_dir, cases_dir = prepare(work)
    results: dict[str, list[dict]] = {"b_plain_haproxy": [], "e_single_chained": []}
    with cluster(work, {"RAY_SERVE_ENABLE_HA_PROXY": "1"}) as (http_port, record):
        serve_port, env = start_serve(work, record, plain_dir)
        for _ in range(args.rounds):
            plain_url = deploy_plain(env, {"host": "127.0.0.1", "port": serve_port})
            results["b_plain_haproxy"].append(load(plain_url, args.seconds, args.connections))
            remove_plain()
            servectl(cases_dir, "apply", "--var", "case=single", "--var", "ingress=python", "--auto-approve")
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
        # A shadow that sleeps 1 s must not hold its callers: their p99 against the plain split's (goal ≤ 1.2).
        "slow_shadow_p99_over_split": {
            path: round(medians[f"{path}_split_slow_shadow_{kind}"]["p99_ms"] / medians[f"{path}_split_{kind}"]["p99_ms"], 2)
            for path, kind in (("c", "python"), ("d", "direct"))
        },
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
    print("slow shadow p99 over the split's:", summary["slow_shadow_p99_over_split"])


if __name__ == "__main__":
    main()
