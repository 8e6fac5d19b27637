#!/usr/bin/env bash
# Creates .venv with Python >= 3.12 (if missing) and installs ssmax-jax with the pinned set.
# Sourced by the quickstart commands; safe to run again (it only installs what changed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

new_enough() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; }

find_python() {
  for cand in python3.13 python3.12 python3; do
    if command -v "$cand" >/dev/null 2>&1 && new_enough "$cand"; then command -v "$cand"; return; fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    local root; root="$(pyenv root)"
    for v in $(ls -1 "$root/versions" 2>/dev/null | sort -rV); do
      local p="$root/versions/$v/bin/python3"
      if [ -x "$p" ] && new_enough "$p"; then echo "$p"; return; fi
    done
  fi
  echo "error: ssmax-jax needs Python >= 3.12; none found (tried python3.13, python3.12, python3, pyenv versions)." >&2
  echo "Install Python 3.12+ (e.g. 'pyenv install 3.12') and run again." >&2
  exit 1
}

if [ ! -x "$VENV/bin/python" ] || ! new_enough "$VENV/bin/python"; then
  PY="$(find_python)"
  echo "setup: creating .venv with $PY ($("$PY" --version))"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
fi

STAMP="$VENV/.ssmax_setup_stamp"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "setup: installing ssmax-jax and pinned dependencies into .venv"
  # The machine-wide pip constraint file (if any) targets Python 3.11; ours is the one that matters.
  PIP_CONSTRAINT="" "$VENV/bin/python" -m pip install -q --upgrade pip
  PIP_CONSTRAINT="" "$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" -e "$ROOT[all,test]"
  echo "$WANT" > "$STAMP"
fi
