"""Needle in a haystack (paper section 3.3): exact match of the 7 digits by greedy decoding over
context length x depth. Writes needle.json, needle_<label>_theta<scale>.png, needle.md into --out.

  python -m experiments.eval_needle --models=runs/ssmax_needle,runs/softmax_needle --out=runs/eval
"""
from absl import flags

from ssmax_jax.cli import eval_flags as ec
from ssmax_jax.evals import runner
from ssmax_jax.cli import program

MULTIPLES = ec.number_list("multiples", ["1", "2", "5", "10", "20"],
                           "Context lengths as multiples of the training length.")
LENGTHS = ec.number_list("context_lengths", [], "Context lengths in tokens (replace --multiples).",
                         kind=int)
DEPTHS = ec.number_list("depths", [f"{d / 10:g}" for d in range(11)],
                        "Needle depths, fractions 0..1 of the haystack.", high=1.0,
                        low_open=False)
TRIALS = flags.DEFINE_integer("trials", 20, "Trials per cell (random city, number, haystack).",
                              lower_bound=1)
THETA_SCALES = ec.number_list("theta_scales", ["50"],
                              "RoPE theta multiples of the model's (the paper: 50).")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Prompts decoded together.", lower_bound=1)
METHOD = flags.DEFINE_enum("method", "generate", ["generate", "teacher_forcing"],
                           "generate: greedy decoding with the KV cache; teacher_forcing: one "
                           "forward, argmax at each answer token (the same exact match).")


def _main(argv):
  del argv
  doc = ec.run(lambda: runner.run_needle(
      ec.MODELS.value, ec.OUT.value, multiples=ec.floats(MULTIPLES.value),
      lengths=ec.ints(LENGTHS.value), depths=ec.floats(DEPTHS.value), trials=TRIALS.value,
      theta_scales=ec.floats(THETA_SCALES.value), batch_size=BATCH_SIZE.value,
      method=METHOD.value, seed=ec.SEED.value, data_source=ec.DATA_SOURCE.value,
      implementation=ec.implementation(), memory_limit_gb=ec.MEMORY_LIMIT_GB.value,
      show_progress=ec.PROGRESS.value))
  for entry in doc["results"]:
    for g in entry["grids"]:
      means = " ".join(f"T={t}:{sum(row) / len(row):.2f}"
                       for t, row in zip(g["context_lengths"], g["accuracy"]))
      print(f"{entry['label']:24s} theta={g['rope_theta']:<9g} {means}")


def main():
  program.run(_main, __doc__, __name__)


if __name__ == "__main__":
  main()
