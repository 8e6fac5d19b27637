"""The shipped training configs (ml_collections), each a module with get_config().

  ssmax-train --config=tiny --workdir=workdirs/tiny
  python -m experiments.train --config=configs/tiny.py --workdir=workdirs/tiny  (from a checkout)

configs/<name>.py in the repository re-exports these, so both spellings load the same config.
"""
import os

DIR = os.path.dirname(os.path.abspath(__file__))
NAMES = tuple(sorted(f[:-3] for f in os.listdir(DIR) if f.endswith(".py") and f != "__init__.py"))


def path(name: str) -> str:
  """The file of the shipped config `name`; ValueError naming the shipped ones if unknown."""
  if name not in NAMES:
    raise ValueError(f"unknown config {name!r}; shipped configs: {', '.join(NAMES)} "
                     "(or pass a config file's path)")
  return os.path.join(DIR, name + ".py")
