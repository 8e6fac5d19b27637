#!/usr/bin/env bash
# Session 8, call 6: HEAD's paper step on one more machine, the anchors between its two runs;
# then every GPU test on HEAD.
source scripts/device_env.sh call6
step() { echo -n "HEAD " | tee -a "$out/ab.log"; paper_step | grep "^| attention" | tail -1 | tee -a "$out/ab.log"; }
step
timeout 150 python3 .devcarry/bench/torch_gpt_anchor.py 2>&1 | tail -2 | tee -a "$out/anchors.log"
timeout 150 python3 .devcarry/bench/jax_gpt_anchor.py 2>&1 | quiet | tail -2 | tee -a "$out/anchors.log"
step
echo "== GPU tests"
timeout 150 python3 -m pytest -q -m gpu tests/ 2>&1 | tail -3 | tee "$out/gpu_tests.log"
