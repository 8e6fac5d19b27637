#!/usr/bin/env bash
# Refreshes requirements/lock-py3.{12,13}.txt: every package of pyproject.toml with all extras,
# pinned with hashes, for CPython 3.12 and 3.13 on linux x86_64. Keeps the locked versions; pass
# --upgrade (or --upgrade-package NAME) to move them, then run the tests. Needs uv (pip install uv).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
for py in 3.12 3.13; do
  "${UV:-uv}" pip compile pyproject.toml --extra all --extra test --python-version "$py" \
    --python-platform x86_64-manylinux_2_28 --generate-hashes --quiet \
    --custom-compile-command "bash scripts/dev/lock.sh" -o "requirements/lock-py$py.txt" "$@"
done
