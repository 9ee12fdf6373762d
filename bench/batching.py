"""Batching throughput: one vectorised numpy model at max_batch_size 1, 8 and 32 under concurrent load.

The model is an 8-layer MLP of 4096×4096 float32 matrices (one matrix product
per layer per batch). One request at a time reads all 512 MiB of weights per
request; a batch of 32 reads them once for 32 requests, which is what
batching is for. The model is this heavy on purpose: with one layer, batch 1
already runs faster than the 2-core box's HTTP path (HAProxy, Serve's proxy,
the load generator) can feed it, and the benchmark would measure that path.
Throughput is measured through the front proxy with 64 concurrent connections
and printed as ratios to batch 1, in one run on one fresh embedded cluster.

    python bench/batching.py [--seconds 8] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark's helpers

from router_overhead import bench_cluster, load, servectl  # noqa: E402  (same cluster, load generator, CLI runner)

MODEL = '''
import numpy as np

class Vectorised:
    """A small MLP: LAYERS matrix products of 4096 floats, done once per batch."""

    def __init__(self, layers=8):
        rng = np.random.default_rng(0)
        self.layers = [rng.standard_normal((4096, 4096), dtype=np.float32) / 64 for _ in range(layers)]
        self.rng = rng

    def __call__(self, requests):
        x = self.rng.standard_normal((len(requests), 4096), dtype=np.float32)  # one input per request
        for weights in self.layers:
            x = np.maximum(x @ weights, 0)  # one matrix product per layer per batch
        return [float(row[0]) for row in x]
'''
MAIN = '''
from servectl import Backend, Endpoint, LocalRay, var
LocalRay(ingress="python")  # through Serve's proxy, as measured before #18's default
size = var("max_batch_size", default=1)
model = Backend("vectorised", "model:Vectorised", max_batch_size=size, batch_wait_timeout_s=0.005,
                omp_num_threads=1, max_concurrent_queries=64, ray_actor_options={"num_cpus": 1})
Endpoint("score", route="/score", backend=model)
'''


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="servectl-batching-") as tmp:
        config = Path(tmp) / "config"
        config.mkdir()
        (config / "main.py").write_text(textwrap.dedent(MAIN))
        (config / "model.py").write_text(MODEL)
        with bench_cluster(Path(tmp)) as port:
            for size in (1, 8, 32):
                servectl(config, "apply", "--var", f"max_batch_size={size}", "--auto-approve")
                results[size] = load(f"http://127.0.0.1:{port}/score", args.seconds, args.connections)
            servectl(config, "destroy", "--auto-approve")
    base = results[1]["throughput"]
    summary = {
        "throughput": {str(k): round(v["throughput"], 1) for k, v in results.items()},
        "ratio_8_vs_1": round(results[8]["throughput"] / base, 2),
        "ratio_32_vs_1": round(results[32]["throughput"] / base, 2),
        "errors": sum(v["errors"] for v in results.values()),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        for size, r in results.items():
            print(f"max_batch_size {size:>2}: {r['throughput']:7.1f} req/s  p50 {r['p50_ms']:7.1f} ms  "
                  f"p99 {r['p99_ms']:7.1f} ms  ratio {r['throughput'] / base:5.2f}  errors {r['errors']}")


if __name__ == "__main__":
    main()
