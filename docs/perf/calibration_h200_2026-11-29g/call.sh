#!/usr/bin/env bash
# Session 2026-11-29 (5th), call 5: the paper step with gate and up fused, then the anchors.
source scripts/device_env.sh call5
timeout 120 python3 -m experiments.bench_train --attention=ssmax --vocab_pad=64 2>&1 | quiet \
  | grep -e "|" -e "^jax" -e "loss=" | grep -v -e "^| configuration" -e "^|---" | tee "$out/bench_train.log"
timeout 100 python3 .devcarry/bench/jax_gpt_anchor.py 2>&1 | quiet | tail -2 | tee "$out/anchors.log"
timeout 100 python3 .devcarry/bench/torch_gpt_anchor.py 2>&1 | tail -2 | tee -a "$out/anchors.log"
