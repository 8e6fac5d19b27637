#!/usr/bin/env bash
# Session 2026-11-29 (6th), call 4: the committed config (new rope, flat-leaves step) against
# HEAD (.devcarry/old), 100 timed steps each, with the GPU's SM clock and power sampled every
# 100 ms (is the back-to-back step slower than the profiled device time because of clocks?);
# the anchors.
source scripts/device_env.sh call4
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
  --format=csv,noheader -lms 100 > "$out/smi.csv" 2>&1 &
smi=$!
mark() { echo "$(date +%H:%M:%S.%N) $*" >> "$out/marks.log"; }
row() { grep "^| attention" | tail -1; }
run_in() { (cd "$1" && PYTHONPATH="/tmp/site:." timeout 150 python3 -m experiments.bench_train \
  --attention=ssmax --vocab_pad=64 "${@:2}" 2>&1 | quiet | row); }
mark start now; run_in . --steps=100 | tee -a "$out/ab.log"; mark end now
mark start old; run_in .devcarry/old --steps=100 | tee -a "$out/ab.log"; mark end old
echo "== anchors"
mark start anchors
timeout 120 python3 .devcarry/bench/jax_gpt_anchor.py 2>&1 | quiet | tail -2 | tee "$out/anchors.log"
timeout 120 python3 .devcarry/bench/torch_gpt_anchor.py 2>&1 | tail -2 | tee -a "$out/anchors.log"
mark end anchors
mark start now20; run_in . | tee -a "$out/ab.log"; mark end now20
kill $smi
cat "$out/marks.log"
awk -F', ' '{print $2, $4, $6}' "$out/smi.csv" | sort | uniq -c | sort -rn | head -12
