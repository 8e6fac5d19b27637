#!/usr/bin/env bash
# Quickstart 2: set up .venv (if needed) and run the test suite (CPU; GPU-only tests skip).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -n 2 "$@"
