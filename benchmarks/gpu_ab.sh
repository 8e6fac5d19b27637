#!/usr/bin/env bash
# On the device: the paper SSMax step of the working tree and of every tree under .devcarry/ab
# (benchmarks/ab_prepare.sh), each twice, in the order A B ... then ... B A so that a drift of the
# machine's clock over the call does not favour one; the anchors of .devcarry/bench in between.
# Only comparisons within one call hold (docs/performance.md). Logs: $OUT/ab.log, anchors.log.
# Usage, from the repo root: bash benchmarks/gpu_ab.sh [bench_train flags, e.g. --steps=50]
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/device_env.sh" gpu_ab
trees=(. .devcarry/ab/*)
site="${PYTHONPATH%%:*}"  # the carried wheels, if device_env.sh installed them
step() {  # tree, then bench_train flags
  local tree=$1; shift
  echo -n "$tree " | tee -a "$out/ab.log"
  (cd "$tree" && PYTHONPATH="$site:." paper_step "$@" | grep "^| attention" | tail -1) \
    | tee -a "$out/ab.log"
}
for t in "${trees[@]}"; do step "$t" "$@"; done
if [ -d .devcarry/bench ]; then
  timeout 150 python3 .devcarry/bench/torch_gpt_anchor.py 2>&1 | tail -2 | tee -a "$out/anchors.log"
  timeout 150 python3 .devcarry/bench/jax_gpt_anchor.py 2>&1 | quiet | tail -2 | tee -a "$out/anchors.log"
fi
for ((i = ${#trees[@]} - 1; i >= 0; i--)); do step "${trees[i]}" "$@"; done
