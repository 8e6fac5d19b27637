#!/usr/bin/env bash
# Session 2026-11-29 (6th), call 5: the loss kernel reading each row once (one tile covers the
# row: 1:65536:32) against the two-pass defaults (4:1024:4): GPU tests, the kernel alone, then
# the paper step with each (.devcarry/alt: the one-pass defaults), twice, anchors between.
source scripts/device_env.sh call5
echo "== GPU tests (loss kernel)"
timeout 100 python3 -m pytest -q -m gpu tests/test_kernel_cross_entropy.py 2>&1 | tail -3 | tee "$out/gpu_tests.log"
echo "== loss kernel alone, bf16 8192 x 50304"
timeout 100 python3 -m experiments.bench_loss_kernel --dtypes=bfloat16 \
  --tiles=4:1024:4,1:65536:32,2:65536:32,1:65536:16,1:1024:4 2>&1 | quiet | grep -e "^|" -e floor | tee "$out/loss_kernel.log"
row() { grep "^| attention" | tail -1; }
run_in() { (cd "$1" && PYTHONPATH="/tmp/site:." timeout 150 python3 -m experiments.bench_train \
  --attention=ssmax --vocab_pad=64 --steps=50 2>&1 | quiet | row); }
echo "== step: now (two-pass loss) / alt (one-pass loss)"
run_in . | tee -a "$out/ab.log"
run_in .devcarry/alt | tee -a "$out/ab.log"
echo "== anchors"
timeout 120 python3 .devcarry/bench/jax_gpt_anchor.py 2>&1 | quiet | tail -2 | tee "$out/anchors.log"
timeout 120 python3 .devcarry/bench/torch_gpt_anchor.py 2>&1 | tail -2 | tee -a "$out/anchors.log"
echo "== step again: alt / now"
run_in .devcarry/alt | tee -a "$out/ab.log"
run_in . | tee -a "$out/ab.log"
