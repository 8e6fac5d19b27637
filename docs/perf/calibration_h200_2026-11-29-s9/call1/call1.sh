#!/usr/bin/env bash
# Session 9, call 1: branch rope-bwd-loop (working tree) against main (.devcarry/ab/main),
# A B anchors B A; then every GPU test on the branch.
bash scripts/gpu_ab.sh
source scripts/device_env.sh call1
echo "== GPU tests"
timeout 170 python3 -m pytest -q -m gpu tests/ 2>&1 | tail -3 | tee "$out/gpu_tests.log"
