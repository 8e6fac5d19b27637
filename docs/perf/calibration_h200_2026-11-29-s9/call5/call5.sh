#!/usr/bin/env bash
# Session 9, call 5: branch fold-multiplier (working tree) against main (f173e96, the rope
# kernel), A B anchors B A; then every GPU test on the branch.
bash scripts/gpu_ab.sh
source scripts/device_env.sh call5
echo "== GPU tests"
timeout 200 python3 -m pytest -q -m gpu tests/ 2>&1 | tail -5 | tee "$out/gpu_tests.log"
