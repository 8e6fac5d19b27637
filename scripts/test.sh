#!/usr/bin/env bash
# Quickstart 2: set up .venv (if needed) and run the test suite (CPU; GPU-only tests skip).
# --dist loadscope: a module runs on one worker, so its module fixtures (training runs) run once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -n 2 --dist loadscope "$@"
