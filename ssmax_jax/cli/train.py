"""Trains (or resumes) a model from an ml_collections config file.

  python -m experiments.train --config=configs/tiny.py --workdir=workdirs/tiny \
      [--config.model.attention=softmax] [--config.train.num_steps=200] ...
  ssmax-train --config=tiny --workdir=workdirs/tiny  (a shipped config by name, or any path)

Unknown --config.* keys are rejected by the flag parser. Re-running with the same --workdir
resumes from its latest checkpoint. SIGTERM saves a checkpoint and stops.
"""
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ssmax_jax import configs
from ssmax_jax import train as train_lib
from ssmax_jax.cli import config_arg

_CONFIG = config_flags.DEFINE_config_file("config", None, "A shipped config's name "
                                          f"({', '.join(configs.NAMES)}) or a config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def _parse_flags(argv):
  argv = config_arg.resolve(argv)
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # config_flags' answer to an unknown --config.key
    key = next((a.split("=")[0][2:] for a in argv if a.startswith("--config.")
                and str(e).strip("'\"") in a.split("=")[0].split(".")), str(e))
    sys.exit(f"error: unknown config key {key!r} ({e}); see the config file and "
             "ssmax_jax/train/config.py for the keys.")


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
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
  app.run(_main, flags_parser=_parse_flags)


if __name__ == "__main__":
  main()
