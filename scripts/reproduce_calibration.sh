#!/usr/bin/env bash
# The calibration call before the h200_small variant runs (about 8 minutes on an H200):
#   1. the loss kernel's GPU tests, and the preset's step with the XLA loss and the Pallas loss
#      kernel (train.loss_implementation), bfloat16 logits as the preset;
#   2. the needle fine-tuning budget, chosen on the softmax baseline by
#      benchmarks/needle_probe.py's rule (docs/reproduce.md); it prints the choice last.
# Usage on the device, from the repo root with .devcarry carried:
#   bash scripts/reproduce_calibration.sh        [SETTINGS=lr:steps,... to try other budgets]
source "$(dirname "${BASH_SOURCE[0]}")/device_env.sh" reproduce_calibration

echo "== loss kernel"
timeout 90 python3 -m pytest -q -m gpu tests/test_kernel_cross_entropy.py 2>&1 | tail -2 \
  | tee "$out/loss_kernel.log"
timeout 100 python3 -m benchmarks.bench_train --model=h200_small --batch=128 --attention=ssmax \
  --vocab_pad=64 --logits_dtype=bfloat16 --loss_implementation=xla,pallas 2>&1 | quiet \
  | grep "|" | tee -a "$out/loss_kernel.log"

echo "== needle fine-tuning budget"
timeout 420 python3 -m benchmarks.needle_probe --preset=h200_small --pretrain_tokens=1.31e8 \
  --settings="${SETTINGS:-2e-5:500,1e-4:500,3e-4:500,1e-3:500}" --multiples=1,2 \
  --workdir=/tmp/needle_probe --data_dir=/tmp/data 2>&1 | quiet | tee "$out/needle_probe.log"
