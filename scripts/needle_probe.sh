#!/usr/bin/env bash
# One device call (about 7 minutes on an H200): the needle fine-tuning budget of the h200_small
# recipe, chosen on the softmax baseline by experiments/needle_probe.py's rule (docs/reproduce.md).
# Usage on the device, from the repo root with .devcarry carried: bash scripts/needle_probe.sh
set -uo pipefail
out="${OUT:-needle_probe}"
mkdir -p "$out"
if ls .devcarry/whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
    .devcarry/whl/*.whl 2>/dev/null
  export PYTHONPATH="/tmp/site:.${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
timeout 540 python3 -m experiments.needle_probe --preset=h200_small --pretrain_tokens=1.31e8 \
  --settings="${SETTINGS:-2e-5:500,1e-4:500,3e-4:500,1e-3:500}" --multiples=1,2 \
  --workdir=/tmp/needle_probe --data_dir=/tmp/data 2>&1 | grep -v -i warning \
  | tee "$out/needle_probe.log"
