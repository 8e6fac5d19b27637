#!/usr/bin/env bash
# Session 2026-11-29 (7th), call 1: in the paper step, stacked projections (now: q/k one matmul
# rotated as one array, gate/up one matmul) against HEAD 49b1aa1 (.devcarry/old), HEAD with the
# loss kernel's old tiles 4:1024:4 (.devcarry/tiles), q/k stacked only (.devcarry/qkonly) and
# q/k/v stacked (.devcarry/qkv); the anchors; a profile of now.
source scripts/device_env.sh call1
row() { grep "^| attention" | tail -1; }
run_in() { echo -n "$1 " | tee -a "$out/ab.log"; (cd "$1" && PYTHONPATH="/tmp/site:." timeout 90 python3 -m experiments.bench_train \
  --attention=ssmax --vocab_pad=64 2>&1 | quiet | row) | tee -a "$out/ab.log"; }
for t in . .devcarry/old .devcarry/tiles .devcarry/qkonly .devcarry/qkv; do run_in $t; done
echo "== anchors"
timeout 100 python3 .devcarry/bench/torch_gpt_anchor.py 2>&1 | tail -2 | tee -a "$out/anchors.log"
timeout 100 python3 .devcarry/bench/jax_gpt_anchor.py 2>&1 | quiet | tail -2 | tee -a "$out/anchors.log"
echo "== again"
for t in .devcarry/qkv .devcarry/qkonly .devcarry/tiles .devcarry/old .; do run_in $t; done
echo "== profile, now"
timeout 100 python3 -m experiments.bench_train --attention=ssmax --vocab_pad=64 --profile_steps=3 \
  --profile_top=30 --dump_hlo="$out/hlo" 2>&1 | quiet | grep -e "|" -e "device" > "$out/profile.log"
head -40 "$out/profile.log"
