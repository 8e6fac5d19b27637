# Sourced by the device scripts: installs the carried wheels (.devcarry/whl,
# docs/dev/workspace.md) when present, puts the checkout on PYTHONPATH, and sets `out` to $OUT
# (the device tool's folder) or ./$1. Defines `quiet`, a filter for absl/XLA info and warning
# lines, and `paper_step`, the paper model's SSMax step timed by bench_train.
set -uo pipefail
out="${OUT:-$1}"
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
# The paper model's SSMax train step (bench_train), quiet; extra bench_train flags after.
# Run from a tree's root: older trees (gpu_ab.sh's copies of git refs) keep it in experiments/.
paper_step() {
  local bench=benchmarks.bench_train
  [ -f benchmarks/bench_train.py ] || bench=experiments.bench_train
  timeout "${STEP_TIMEOUT:-150}" python3 -m "$bench" --attention=ssmax \
    --vocab_pad=64 "$@" 2>&1 | quiet
}
