#!/usr/bin/env bash
# One device call that measures what the open performance work needs, in one run, with the
# anchors beside it (docs/WORKSPACE.md, "Run on a GPU"):
#   1. the GPU tests;
#   2. the paper model's train step (SSMax, softmax) with device time by kernel;
#   3. the anchors of shared/bench (if copied to .devcarry/bench);
#   4. the h200_small preset on real tokens (corpus of this machine's site-packages), profiled.
# Usage on the device (from the repo root, .devcarry carried): bash scripts/gpu_calibration.sh
# Logs go to $OUT (the device tool's folder) or ./gpu_calibration.
set -uo pipefail
out="${OUT:-gpu_calibration}"
mkdir -p "$out"
if ls .devcarry/whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
    .devcarry/whl/*.whl 2>/dev/null
  export PYTHONPATH="/tmp/site:.${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
quiet() { grep -v -i -e warning -e "^I[0-9]" ; }

echo "== GPU tests"
timeout 240 python3 -m pytest -q -m gpu tests/ -x 2>&1 | tail -3 | tee "$out/gpu_tests.log"

echo "== paper_162m step, profiled"
timeout 240 python3 -m experiments.bench_train --attention=ssmax,softmax --vocab_pad=64 \
  --breakdown --profile_steps=3 2>&1 | quiet | tee "$out/bench_train.log"

if [ -d .devcarry/bench ]; then
  echo "== anchors"
  timeout 150 python3 .devcarry/bench/jax_gpt_anchor.py 2>&1 | quiet | tail -2 | tee "$out/anchors.log"
  timeout 150 python3 .devcarry/bench/torch_gpt_anchor.py 2>&1 | tail -2 | tee -a "$out/anchors.log"
fi

echo "== h200_small on real tokens, profiled"
data=$(python3 -c "from configs import reproduce; from ssmax_jax.evals import recipe
c = reproduce.get_config('h200_small'); print(recipe.prepare_corpus(c.recipe, 'gpt2', '/tmp/data')[0])" \
  2>/dev/null | tail -1)
timeout 240 python3 -m experiments.bench_train --model=h200_small --attention=ssmax \
  --vocab_pad=64 --batch=128 --real_tokens --pipeline_data="$data" --workers=4 \
  --profile_steps=3 2>&1 | quiet | tee "$out/bench_small.log"
