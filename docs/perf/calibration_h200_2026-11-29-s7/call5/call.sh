#!/usr/bin/env bash
# Session 2026-11-29 (7th), call 5: ops.attention.scale_query, the SSMax multiplier with its own
# backward (an optimization barrier between dq and dc; now) against HEAD 49b1aa1
# (.devcarry/old) in the paper step; the anchors; cuDNN's GPU test; a profile of now.
source scripts/device_env.sh call5
row() { grep "^| attention" | tail -1; }
run_in() { echo -n "$1 " | tee -a "$out/ab.log"; (cd "$1" && PYTHONPATH="/tmp/site:." \
  timeout 90 python3 -m experiments.bench_train --attention=ssmax --vocab_pad=64 2>&1 | quiet | row) | tee -a "$out/ab.log"; }
run_in .; run_in .devcarry/old
echo "== anchors"
timeout 100 python3 .devcarry/bench/torch_gpt_anchor.py 2>&1 | tail -2 | tee -a "$out/anchors.log"
timeout 100 python3 .devcarry/bench/jax_gpt_anchor.py 2>&1 | quiet | tail -2 | tee -a "$out/anchors.log"
run_in .devcarry/old; run_in .
echo "== GPU test, cuDNN with SSMax"
timeout 60 python3 -m pytest -q -m gpu tests/test_ops.py 2>&1 | tail -2 | tee "$out/gpu_tests.log"
echo "== profile, now"
timeout 80 python3 -m experiments.bench_train --attention=ssmax --vocab_pad=64 --profile_steps=3 \
  --profile_top=30 2>&1 | quiet | grep -e "|" -e "device" > "$out/profile.log"
head -36 "$out/profile.log"
