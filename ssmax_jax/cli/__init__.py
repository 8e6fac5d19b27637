"""The command-line programs, one module each with main(): the console commands ssmax-train,
ssmax-prep-data, ssmax-eval-loss-by-position, ssmax-eval-needle, ssmax-eval-attention,
ssmax-eval-learned-s, ssmax-report, ssmax-reproduce and ssmax-reproduce-report, also run from a
checkout as python -m experiments.<module> (experiments/*.py are shims of these).

The top layer: it imports every other, nothing imports it.
"""
import importlib.util

# What the commands import beyond the core install, by module and by the package that has it.
_TRAIN_EXTRA = {"absl": "absl-py", "ml_collections": "ml-collections", "optax": "optax",
                "orbax.checkpoint": "orbax-checkpoint", "grain": "grain",
                "tensorboardX": "tensorboardX", "tqdm": "tqdm"}


def missing_packages(modules: dict = _TRAIN_EXTRA) -> list:
  """The packages of `modules` (module -> package) that are not installed."""
  def found(module):
    try:
      return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package of a dotted name is missing
      return False
  return [package for module, package in modules.items() if not found(module)]


if missing_packages():
  raise ImportError(f"the ssmax-jax commands need the [train] extra "
                    f"({', '.join(missing_packages())} not installed): "
                    "pip install 'ssmax-jax[train]'")
