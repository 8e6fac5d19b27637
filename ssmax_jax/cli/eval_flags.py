"""Flags shared by the eval_* commands (ssmax_jax/cli/eval_*.py), and their error handling."""
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
  return doc
