# Sourced by the device scripts: installs the carried wheels (.devcarry/whl, docs/WORKSPACE.md)
# when present, puts the checkout on PYTHONPATH, and sets `out` to $OUT (the device tool's
# folder) or ./$1. Defines `quiet`, a filter for absl/XLA info and warning lines.
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
