#!/usr/bin/env bash
# Creates .venv with Python 3.12 or 3.13 (if missing) and installs ssmax-jax with every extra, each
# package at the version and hashes of requirements/lock-py3.X.txt for the venv's Python.
# Sourced by the quickstart commands; safe to run again (it only installs what changed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

# A Python the lock covers (requirements/lock-py3.12.txt, lock-py3.13.txt).
pyver() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
new_enough() { local v; v="$(pyver "$1")" && [ -f "$ROOT/requirements/lock-py$v.txt" ]; }

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
  echo "error: the locked set needs Python 3.12 or 3.13; none found (tried python3.13, python3.12, python3, pyenv versions)." >&2
  echo "Install one (e.g. 'pyenv install 3.12') and run again." >&2
  exit 1
}

if [ ! -x "$VENV/bin/python" ] || ! new_enough "$VENV/bin/python"; then
  PY="$(find_python)"
  echo "setup: creating .venv with $PY ($("$PY" --version))"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
fi

LOCK="$ROOT/requirements/lock-py$(pyver "$VENV/bin/python").txt"

STAMP="$VENV/.ssmax_setup_stamp"
WANT="$(cat "$ROOT/pyproject.toml" "$LOCK" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "setup: installing the locked dependencies ($(basename "$LOCK")) and ssmax-jax into .venv"
  # The machine-wide pip constraint file (if any) targets Python 3.11; the lock is what matters.
  PIP_CONSTRAINT="" "$VENV/bin/python" -m pip install -q --upgrade pip
  PIP_CONSTRAINT="" "$VENV/bin/python" -m pip install -q --require-hashes -r "$LOCK"
  PIP_CONSTRAINT="" "$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT[all,test]"
  echo "$WANT" > "$STAMP"
fi
