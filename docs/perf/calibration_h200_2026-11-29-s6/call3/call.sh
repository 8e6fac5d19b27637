#!/usr/bin/env bash
# Session 2026-11-29 (6th), call 3: the step taking the state's leaves (flat) with the new rope
# (now), flat with HEAD's rope (.devcarry/mid), and HEAD's nnx.State step and rope
# (.devcarry/old); host time in the call; anchors; GPU tests.
source scripts/device_env.sh call3
row() { grep "^| attention" | tail -1; }
run_in() { (cd "$1" && PYTHONPATH="/tmp/site:." timeout 150 python3 -m experiments.bench_train \
  --attention=ssmax --vocab_pad=64 2>&1 | quiet | row); }
for round in 1 2; do
  echo "== round $round: now / mid (flat, old rope) / old (HEAD)"
  run_in . | tee -a "$out/ab.log"
  run_in .devcarry/mid | tee -a "$out/ab.log"
  run_in .devcarry/old | tee -a "$out/ab.log"
  if [ $round = 1 ]; then
    echo "== anchors"
    timeout 120 python3 .devcarry/bench/jax_gpt_anchor.py 2>&1 | quiet | tail -2 | tee "$out/anchors.log"
    timeout 120 python3 .devcarry/bench/torch_gpt_anchor.py 2>&1 | tail -2 | tee -a "$out/anchors.log"
  fi
done
echo "== GPU tests"
timeout 170 python3 -m pytest -q -m gpu tests/ 2>&1 | tail -3 | tee "$out/gpu_tests.log"
