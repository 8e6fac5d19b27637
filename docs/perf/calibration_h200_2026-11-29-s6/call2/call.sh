#!/usr/bin/env bash
# Session 2026-11-29 (6th), call 2: rope without a concatenate (now) against the rope of HEAD
# (.devcarry/old, otherwise the same tree), each with XLA's dot merger on and off; host time
# per step; the anchors; a profile of the new rope.
source scripts/device_env.sh call2
row() { grep "^| attention" | tail -1; }
now() { timeout 150 python3 -m experiments.bench_train --attention=ssmax --vocab_pad=64 "$@" 2>&1 | quiet | row; }
old() { (cd .devcarry/old && PYTHONPATH="/tmp/site:." timeout 150 python3 -m experiments.bench_train \
  --attention=ssmax --vocab_pad=64 "$@" 2>&1 | quiet | row); }
nomerge="--xla_flags=--xla_gpu_enable_triton_gemm=false --xla_gpu_dot_merger_threshold_mb=0"
echo "== rope now / HEAD"
now | tee "$out/ab.log"
old | tee -a "$out/ab.log"
echo "== dot merger off: rope now / HEAD"
now "$nomerge" | tee -a "$out/ab.log"
old "$nomerge" | tee -a "$out/ab.log"
echo "== anchors"
timeout 120 python3 .devcarry/bench/jax_gpt_anchor.py 2>&1 | quiet | tail -2 | tee "$out/anchors.log"
timeout 120 python3 .devcarry/bench/torch_gpt_anchor.py 2>&1 | tail -2 | tee -a "$out/anchors.log"
echo "== again: rope now / HEAD"
now | tee -a "$out/ab.log"
old | tee -a "$out/ab.log"
echo "== profile, rope now"
timeout 200 python3 -m experiments.bench_train --attention=ssmax --vocab_pad=64 --profile_steps=3 \
  --profile_top=30 --dump_hlo="$out/hlo" 2>&1 | quiet | grep -e "|" -e "device" > "$out/profile.log"
head -45 "$out/profile.log"
