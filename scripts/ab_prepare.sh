#!/usr/bin/env bash
# Here, before a device call: copies the library, experiments and configs of each git REF into
# .devcarry/ab/<REF> (git-ignored, carried with .devcarry), for scripts/gpu_ab.sh to time
# against the working tree. The device machine gets a copy of the working tree without git
# history, so the trees to compare travel this way (docs/WORKSPACE.md, "Run on a GPU").
# Usage: bash scripts/ab_prepare.sh main qk-backward
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rm -rf .devcarry/ab
for ref in "$@"; do
  dir=".devcarry/ab/${ref//\//_}"
  mkdir -p "$dir"
  git archive "$ref" ssmax_jax experiments configs | tar -x -C "$dir"
  echo "$dir: $(git rev-parse --short "$ref")"
done
