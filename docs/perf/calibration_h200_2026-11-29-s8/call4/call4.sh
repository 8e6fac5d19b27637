#!/usr/bin/env bash
# Session 8, call 4: the working tree (paper config with one loss chunk of 32,768 tokens) against
# main (.devcarry/ab/main, chunks of 8,192), mirrored, anchors between; the kernels' GPU tests.
set -uo pipefail
bash scripts/gpu_ab.sh
source scripts/device_env.sh call4
echo "== GPU tests, loss and norm kernels"
timeout 120 python3 -m pytest -q -m gpu tests/test_kernel_cross_entropy.py tests/test_kernel_rms_norm.py 2>&1 | tail -3 | tee "$out/gpu_tests.log"
