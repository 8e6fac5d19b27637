#!/usr/bin/env bash
# Session 8, call 1: branch qk-backward (working tree) against main (.devcarry/ab/main) in the
# paper step, mirrored, anchors between; then the GPU tests on the branch's code.
set -uo pipefail
bash scripts/gpu_ab.sh
source scripts/device_env.sh call1
echo "== GPU tests (branch)"
timeout 150 python3 -m pytest -q -m gpu tests/ 2>&1 | tail -3 | tee "$out/gpu_tests.log"
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv | tee "$out/smi.log"
