"""Trains (or resumes) a model from an ml_collections config file.

  python -m experiments.train --config=configs/tiny.py --workdir=workdirs/tiny \
      [--config.model.attention=softmax] [--config.train.num_steps=200] ...
  ssmax-train --config=tiny --workdir=workdirs/tiny  (a shipped config by name, or any path)

--print_config lists every key with its value and meaning; an unknown --config.KEY is an error
that names the closest key. Re-running with the same --workdir
resumes from its latest checkpoint. SIGTERM saves a checkpoint and stops.
"""
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ssmax_jax import configs
from ssmax_jax import train as train_lib
from ssmax_jax.cli import config_arg, program
from ssmax_jax.train import config as config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "A shipped config's name "
                                          f"({', '.join(configs.NAMES)}) or a config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics "
                               "(required to train).")
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False, "Print every key of the resolved "
                                  "config with its value and description, then exit.")


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _PRINT_CONFIG.value:
    print(config_lib.describe(_CONFIG.value))
    return
  if not _WORKDIR.value:
    sys.exit("error: --workdir is required: the directory for this run's checkpoints and "
             "metrics (an existing one resumes).")
  logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
  try:
    train_lib.apply_xla_flags(_CONFIG.value)  # before anything starts JAX's backends
    result = train_lib.train(_CONFIG.value, _WORKDIR.value)
  except (ValueError, train_lib.NonFiniteLossError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"finished at step {result['step']}, loss {result['loss']:.4f}"
        + (" (stopped by signal)" if result["stopped"] else ""))


def main():
  program.run(_main, __doc__, __name__, rewrite=config_arg.resolve)


if __name__ == "__main__":
  main()
