#!/usr/bin/env bash
# Session 8, call 5: HEAD (paper config: one 32,768-token loss chunk) against the same tree with
# chunks of 8,192, on another machine: mirrored, anchors between; nvidia-smi during a run.
source scripts/device_env.sh call5
step() { local label=$1; shift; echo -n "$label " | tee -a "$out/ab.log"
  paper_step "$@" | grep "^| attention" | tail -1 | tee -a "$out/ab.log"; }
step config; step chunk8192 --chunk=8192
timeout 150 python3 .devcarry/bench/torch_gpt_anchor.py 2>&1 | tail -2 | tee -a "$out/anchors.log"
timeout 150 python3 .devcarry/bench/jax_gpt_anchor.py 2>&1 | quiet | tail -2 | tee -a "$out/anchors.log"
step chunk8192 --chunk=8192
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_throttle_reasons.active --format=csv,noheader -lms 200 > "$out/smi.log" &
smi=$!
step config
kill $smi
awk -F', ' '$3+0 > 400 {n++; p+=$3; c+=$2} END {if (n) printf "busy samples %d: mean %.0f W, mean SM %.0f MHz\n", n, p/n, c/n}' "$out/smi.log" | tee -a "$out/ab.log"
