"""--config=NAME[:ARG]: a shipped config by name (ssmax_jax/configs/NAME.py), or any file's path."""
import os
import sys

from ssmax_jax import configs


def _path(value: str) -> str:
  name, sep, arg = value.partition(":")
  if os.sep in name or name.endswith(".py") or os.path.exists(name):
    return value  # a file: config_flags reads it (and reports a missing one) itself
  try:
    return configs.path(name) + sep + arg
  except ValueError as e:
    sys.exit(f"error: --config={value}: {e}")


def resolve(argv: list[str]) -> list[str]:
  """argv with each --config=NAME[:ARG] (or --config NAME) replaced by the shipped file's path,
  before absl parses it; exits with the shipped names if NAME is neither one nor a file."""
  out = list(argv)
  for i, a in enumerate(out):
    if a.startswith("--config="):
      out[i] = "--config=" + _path(a.split("=", 1)[1])
    elif a == "--config" and i + 1 < len(out):
      out[i + 1] = _path(out[i + 1])
  return out
