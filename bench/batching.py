"""Batching throughput: one vectorised numpy model at max_batch_size 1, 8 and 32 under concurrent load.

The model is an 8-layer MLP of 4096×4096 float32 matrices (one matrix product
per layer per batch). One request at a time reads all 512 MiB of weights per
request; a batch of 32 reads them once for 32 requests, which is what
batching is for. The model is this heavy on purpose: with one layer, batch 1
already runs faster than the 2-core box's HTTP path (HAProxy, Serve's proxy,
the load generator) can feed it, and the benchmark would measure that path.
Throughput is measured through the front proxy with 64 concurrent connections
and printed as ratios to batch 1, in one run on one fresh embedded cluster —
and, since that ratio measures the machine as much as servectl (1.9× at 32 on
one box, 4.35× on another), beside the baseline it lacked: the same model
called in-process (one thread, as the replica runs it) at each batch size in
the same run, while the cluster idles. ``fraction_of_model_N`` is servectl's
batched throughput over the model's own at batch N (issue #18: ≥ 0.8 at 32).

    python bench/batching.py [--seconds 8] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark's helpers

from router_overhead import bench_cluster, load, servectl  # noqa: E402  (same cluster, load generator, CLI runner)

from servectl.providers.local_ray import DIRECT_INGRESS_ENV  # noqa: E402

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
LocalRay()  # the fast path (servectl's default): front proxy -> replica
size = var("max_batch_size", default=1)
model = Backend("vectorised", "model:Vectorised", max_batch_size=size, batch_wait_timeout_s=0.005,
                omp_num_threads=1, max_concurrent_queries=64, ray_actor_options={"num_cpus": 1})
Endpoint("score", route="/score", backend=model)
'''
IN_PROCESS = '''
import json, sys, time
sys.path.insert(0, sys.argv[1])
from model import Vectorised
model = Vectorised()
size, seconds = int(sys.argv[2]), float(sys.argv[3])
model([None] * size)  # the first call pays for the pages of the weights
done, start = 0, time.perf_counter()
while time.perf_counter() - start < seconds:
    model([None] * size)
    done += size
print(json.dumps({"throughput": done / (time.perf_counter() - start)}))
'''


def in_process(config: Path, size: int, seconds: float) -> float:
    """Items a second of the model called directly at batch ``size`` for ``seconds``, one BLAS thread (as
    ``omp_num_threads=1`` gives the replica), in a process of its own."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", IN_PROCESS, str(config), str(size), str(seconds)],
                         capture_output=True, text=True, env=env, timeout=seconds + 120)
    if out.returncode != 0:
        raise SystemExit(f"the in-process model failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["throughput"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results, model = {}, {}
    with tempfile.TemporaryDirectory(prefix="servectl-batching-") as tmp:
        config = Path(tmp) / "config"
        config.mkdir()
        (config / "main.py").write_text(textwrap.dedent(MAIN))
        (config / "model.py").write_text(MODEL)
        with bench_cluster(Path(tmp), DIRECT_INGRESS_ENV) as port:
            for size in (1, 8, 32):
                servectl(config, "apply", "--var", f"max_batch_size={size}", "--auto-approve")
                results[size] = load(f"http://127.0.0.1:{port}/score", args.seconds, args.connections)
                model[size] = in_process(config, size, args.seconds)
            servectl(config, "destroy", "--auto-approve")
    base = results[1]["throughput"]
    summary = {
        "throughput": {str(k): round(v["throughput"], 1) for k, v in results.items()},
        "ratio_8_vs_1": round(results[8]["throughput"] / base, 2),
        "ratio_32_vs_1": round(results[32]["throughput"] / base, 2),
        "model_in_process": {str(k): round(v, 1) for k, v in model.items()},
        **{f"fraction_of_model_{k}": round(results[k]["throughput"] / model[k], 3) for k in results},
        "errors": sum(v["errors"] for v in results.values()),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        for size, r in results.items():
            print(f"max_batch_size {size:>2}: {r['throughput']:7.1f} req/s  p50 {r['p50_ms']:7.1f} ms  "
                  f"p99 {r['p99_ms']:7.1f} ms  ratio {r['throughput'] / base:5.2f}  errors {r['errors']}  "
                  f"model in-process {model[size]:7.1f}/s  fraction {r['throughput'] / model[size]:5.2f}")


if __name__ == "__main__":
    main()
