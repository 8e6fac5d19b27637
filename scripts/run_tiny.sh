#!/usr/bin/env bash
# Quickstart 1: set up .venv (if needed) and train the embedded default (configs/tiny.py):
# a byte-level SSMax model on Shakespeare, a few minutes on a laptop CPU, then a text sample.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m experiments.train --config=configs/tiny.py --workdir="${WORKDIR:-workdirs/tiny}" "$@"
