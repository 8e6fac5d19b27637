"""Flags shared by the eval_* commands (ssmax_jax/cli/eval_*.py), and their error handling."""
import math
import sys

from absl import flags
from absl import logging

MODELS = flags.DEFINE_list(
    "models", None, "Checkpoints to evaluate, each [LABEL=]WORKDIR[@STEP][:VARIANT]; VARIANT "
    "switches the attention at inference (e.g. runs/softmax:qwen_logn).")
OUT = flags.DEFINE_string("out", "", "Output directory (default: WORKDIR/eval for one model).")
IMPLEMENTATION = flags.DEFINE_enum(
    "implementation", "default", ["default", "auto", "xla", "cudnn", "pallas"],
    "Attention backend: default = XLA on CPU, a flash kernel (cuDNN/Pallas) on GPU and TPU; "
    "auto = the op's own choice.")
MEMORY_LIMIT_GB = flags.DEFINE_float(
    "memory_limit_gb", None, "Usable device memory; default 90% of the device's (host RAM on CPU).")
DATA_SOURCE = flags.DEFINE_string(
    "data_source", "", "Evaluation data (validation split); default: the run's data.source.")
SEED = flags.DEFINE_integer("seed", 0, "Seed of the needle trials.")
PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars.")


def implementation():
  return {"auto": None}.get(IMPLEMENTATION.value, IMPLEMENTATION.value)


def _numbers(values, kind, low, high, low_open):
  try:
    numbers = [kind(v) for v in values or ()]
  except ValueError:
    return False
  return all(math.isfinite(x) and (x > low if low_open else x >= low) and
             (high is None or x <= high) for x in numbers)


def number_list(name: str, default: list, help_text: str, *, kind=float, low=0.0,
                high=None, low_open=True):
  """A comma-separated list flag of finite numbers in (low, high] (or [low, high]), checked
  when flags are parsed: a bad value is one line naming the flag."""
  holder = flags.DEFINE_list(name, default, help_text)
  interval = f"{'(' if low_open else '['}{low:g}, {'inf)' if high is None else f'{high:g}]'}"
  flags.register_validator(
      name, lambda v: _numbers(v, kind, low, high, low_open),
      message=f"--{name} takes comma-separated {kind.__name__}s in {interval}")
  return holder


def positive(name: str, strict: bool = True):
  """Registers a check that the number flag `name` is > 0 (>= 0 with strict=False) or None."""
  flags.register_validator(
      name, lambda v: v is None or (math.isfinite(v) and (v > 0 if strict else v >= 0)),
      message=f"--{name} must be {'> 0' if strict else '>= 0'}")


positive("memory_limit_gb")


def floats(values):
  return [float(v) for v in values or ()]


def ints(values):
  return [int(v) for v in values or ()]


def run(fn):
  """Calls fn() and turns the ValueErrors a user can cause into one line and exit status 1."""
  logging.set_verbosity(logging.ERROR)  # orbax warns about every read-only checkpoint manager
  if not MODELS.value:
    sys.exit("error: pass --models=[LABEL=]WORKDIR[@STEP][:VARIANT],...")
  try:
    doc = fn()
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  if _has_nan(doc.get("results")):  # the files are written: a NaN must not pass as a result
    print(f"error: the results hold NaN (written to {OUT.value or 'WORKDIR/eval'}): the "
          "checkpoint or its evaluation diverged; evaluate another step (--models=DIR@STEP).",
          file=sys.stderr)
    sys.exit(1)
  return doc


def _has_nan(value) -> bool:
  if isinstance(value, float):
    return math.isnan(value)
  if isinstance(value, dict):
    return any(_has_nan(v) for v in value.values())
  if isinstance(value, (list, tuple)):
    return any(_has_nan(v) for v in value)
  return False
