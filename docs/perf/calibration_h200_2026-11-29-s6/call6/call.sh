#!/usr/bin/env bash
# Session 2026-11-29 (6th), call 6: the loss kernel's new defaults 1:1024:4 (now) against
# 4:1024:4 (.devcarry/alt) in the paper step; the anchors; a last sweep of the loss kernel.
source scripts/device_env.sh call6
row() { grep "^| attention" | tail -1; }
run_in() { (cd "$1" && PYTHONPATH="/tmp/site:." timeout 100 python3 -m experiments.bench_train \
  --attention=ssmax --vocab_pad=64 --steps=50 2>&1 | quiet | row); }
echo "== step: now (loss 1:1024:4) / alt (4:1024:4)"
run_in . | tee -a "$out/ab.log"
run_in .devcarry/alt | tee -a "$out/ab.log"
echo "== anchors"
timeout 100 python3 .devcarry/bench/torch_gpt_anchor.py 2>&1 | tail -2 | tee -a "$out/anchors.log"
timeout 100 python3 .devcarry/bench/jax_gpt_anchor.py 2>&1 | quiet | tail -2 | tee -a "$out/anchors.log"
echo "== loss kernel"
timeout 60 python3 -m experiments.bench_loss_kernel --dtypes=bfloat16 \
  --tiles=1:1024:4,1:512:4,1:2048:4,2:1024:4,1:1024:2 2>&1 | quiet | grep -e "^|" -e floor | tee "$out/loss_kernel.log"
