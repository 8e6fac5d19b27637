#!/usr/bin/env bash
# Here, before a device call: copies the library, experiments and configs of each git REF into
# .devcarry/ab/<REF> (git-ignored, carried with .devcarry), for benchmarks/gpu_ab.sh to time
# against the working tree. The device machine gets a copy of the working tree without git
# history, so the trees to compare travel this way (docs/dev/workspace.md, "Run on a GPU").
# Also benchmarks/ where the ref has it (older refs keep bench_train in experiments/).
# Usage: bash benchmarks/ab_prepare.sh main qk-backward
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rm -rf .devcarry/ab
for ref in "$@"; do
  dir=".devcarry/ab/${ref//\//_}"
  mkdir -p "$dir"
  extra=$(git cat-file -e "$ref:benchmarks" 2>/dev/null && echo benchmarks || true)
  git archive "$ref" ssmax_jax experiments configs $extra | tar -x -C "$dir"
  echo "$dir: $(git rev-parse --short "$ref")"
done
