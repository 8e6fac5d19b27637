"""Test loss per position at 1x..20x the training length, with and without a raised RoPE theta
(the paper's Fig. 5). Writes loss_by_position.{json,png,md} into --out.

  python -m experiments.eval_loss_by_position --models=runs/softmax,runs/ssmax --out=runs/eval
"""
from absl import flags

from ssmax_jax.cli import eval_flags as ec
from ssmax_jax.evals import runner
from ssmax_jax.cli import program

MULTIPLES = ec.number_list("multiples", ["1", "2", "5", "10", "20"],
                           "Context lengths as multiples of the training length.")
LENGTHS = ec.number_list("context_lengths", [], "Context lengths in tokens (replace --multiples).",
                         kind=int)
THETA_SCALES = ec.number_list("theta_scales", ["1", "50"],
                              "RoPE theta multiples of the model's (the paper: 50).")
NUM_SEQUENCES = flags.DEFINE_integer("num_sequences", 16, "Windows of the validation data per "
                                     "length.", lower_bound=1)
BATCH_SIZE = flags.DEFINE_integer("batch_size", 1, "Sequences per forward.", lower_bound=1)
WINDOW = flags.DEFINE_integer("window", 0, "Positions averaged per point (0: l_train // 8).",
                              lower_bound=0)
DOCUMENTS_ONLY = flags.DEFINE_bool(
    "documents_only", False, "Start every window at a document long enough (position = tokens "
    "into the document); default: evenly spaced windows of the stream, across documents.")


def _main(argv):
  del argv
  doc = ec.run(lambda: runner.run_loss_by_position(
      ec.MODELS.value, ec.OUT.value, multiples=ec.floats(MULTIPLES.value),
      lengths=ec.ints(LENGTHS.value), theta_scales=ec.floats(THETA_SCALES.value),
      num_sequences=NUM_SEQUENCES.value, batch_size=BATCH_SIZE.value, window=WINDOW.value,
      documents_only=DOCUMENTS_ONLY.value,
      data_source=ec.DATA_SOURCE.value, implementation=ec.implementation(),
      memory_limit_gb=ec.MEMORY_LIMIT_GB.value, show_progress=ec.PROGRESS.value))
  for entry in doc["results"]:
    for c in entry["curves"]:
      print(f"{entry['label']:24s} T={c['context_length']:6d} theta={c['rope_theta']:<9g} "
            f"loss={c['mean_loss']:.4f}")


def main():
  program.run(_main, __doc__, __name__)


if __name__ == "__main__":
  main()
