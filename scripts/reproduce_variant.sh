#!/usr/bin/env bash
# One variant of the paper's reproduction in one device call (about 6-8 minutes on an H200):
# trains, fine-tunes on needles, evaluates, and leaves the eight result files in $OUT/VARIANT
# (copy them into docs/results/PRESET/VARIANT, then run experiments.reproduce_report).
# Usage on the device, from the repo root with .devcarry carried (docs/reproduce.md):
#   bash scripts/reproduce_variant.sh VARIANT [--config.KEY=VALUE ...]
# VARIANT: softmax (also (e), qwen_logn, llama4_temperature), ssmax, ssmax_fixed, ssmax_bias,
# ssmax_final10. PRESET=cpu_tiny (default h200_small) picks another preset of configs/reproduce.py.
variant="${1:?usage: bash scripts/reproduce_variant.sh VARIANT [--config.KEY=VALUE ...]}"
shift
source "$(dirname "${BASH_SOURCE[0]}")/device_env.sh" "reproduce_$variant"

preset="${PRESET:-h200_small}"
python3 -m experiments.reproduce --preset="$preset" --variant="$variant" \
  --out="docs/results/$preset/$variant" --workdir="/tmp/reproduce_$preset" \
  --data_dir=/tmp/reproduce_data "$@" 2>&1 | quiet | grep -v "^step "
status=${PIPESTATUS[0]}
cp -r "docs/results/$preset/$variant" "$out/"
exit "$status"
