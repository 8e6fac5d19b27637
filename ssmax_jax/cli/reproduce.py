"""One command per variant of the paper: prepare the corpus, train, evaluate, summarise.

  python -m experiments.reproduce --preset=h200_small --variant=ssmax --out=DIR \
      [--config.recipe.tokens=5e8] [--config.train.batch_size=128] [--config.model.d_model=256]

Presets: ssmax_jax/configs/reproduce.py (cpu_tiny, h200_small, paper_162m). Variants: softmax
(also gives softmax_then_ssmax, qwen_logn and llama4_temperature), ssmax, ssmax_fixed, ssmax_bias,
ssmax_final10. DIR receives at most 8 files (summary.json and the evaluation JSON/PNG);
checkpoints go to --workdir, the prepared corpus to --data_dir. Gather the results with
experiments.reproduce_report. See docs/reproduce.md.
"""
import os
import shlex
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ssmax_jax.configs import reproduce as presets
from ssmax_jax import train as train_lib
from ssmax_jax.reproduce import variants
from ssmax_jax.reproduce.run import run
from ssmax_jax.cli import program

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Set by --preset (ssmax_jax/configs/reproduce.py:NAME); override keys with "
    "--config.KEY=VALUE.", lock_config=True)
_PRESET = flags.DEFINE_string("preset", None, f"One of {', '.join(presets.PRESETS)}.")
_VARIANT = flags.DEFINE_string("variant", None, f"One of {', '.join(variants.RUNNABLE)}.")
_OUT = flags.DEFINE_string("out", None, "Directory for summary.json and the evaluation results.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Checkpoints and full evaluation outputs (default "
                               "workdirs/reproduce/PRESET); an existing run there is resumed.")
_DATA_DIR = flags.DEFINE_string("data_dir", "workdirs/reproduce/data",
                                "Where the prepared corpus is cached.")
_PROGRESS = flags.DEFINE_bool("progress", False, "Progress bars in the evaluations.")
_TRAIN_ONLY = flags.DEFINE_bool(
    "train_only", False, "Only prepare and train (e.g. on every host of a cluster with "
    "--config.distributed=True); the same command without it then evaluates the finished run.")
flags.mark_flags_as_required(["preset", "variant", "out"])


def _preset_config(argv):
  """--preset=NAME becomes --config=ssmax_jax/configs/reproduce.py:NAME before flags are parsed."""
  names = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--preset=")]
  if any(a == "--config" or a.startswith("--config=") for a in argv[1:]):
    sys.exit("error: pass --preset=NAME, not --config (override keys with --config.KEY=VALUE).")
  if names:
    if names[-1] not in presets.PRESETS:
      sys.exit(f"error: --preset={names[-1]!r} is unknown; choose one of "
               f"{', '.join(presets.PRESETS)}.")
    argv = [argv[0], f"--config={presets.__file__}:{names[-1]}", *argv[1:]]
  return argv


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.ERROR)  # orbax logs every file operation
  command = "python -m experiments.reproduce " + shlex.join(sys.argv[1:])
  workdir = _WORKDIR.value or os.path.join("workdirs", "reproduce", _PRESET.value)
  try:
    summary = run(_CONFIG.value, _VARIANT.value, _OUT.value, workdir=workdir,
                  data_dir=_DATA_DIR.value, command=command, show_progress=_PROGRESS.value,
                  train_only=_TRAIN_ONLY.value)
  except (ValueError, train_lib.NonFiniteLossError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  if _TRAIN_ONLY.value:
    print(f"trained {', '.join(summary['trained'])} in {workdir}; evaluate with the same command "
          "without --train_only (and without --config.distributed=True), on one host.")
    return
  for label, m in summary["models"].items():
    loss = m["metrics"].get("loss", {})
    line = " ".join(f"θ×{t} " + "/".join(f"{v:.3f}" for v in by_m.values())
                    for t, by_m in loss.items())
    needle = m["metrics"].get("needle", {})
    acc = " ".join("/".join(f"{v:.2f}" for v in by_m.values()) for by_m in needle.values())
    print(f"{label:20s} tokens {m['tokens']:,}  loss at {'/'.join(next(iter(loss.values()), {}))}x: "
          f"{line}  needle: {acc}")
  print(f"wall time (s): {summary['wall_s']}; wrote {', '.join(summary['files'])} to {_OUT.value}")


def main():
  program.run(_main, __doc__, __name__, rewrite=_preset_config)


if __name__ == "__main__":
  main()
