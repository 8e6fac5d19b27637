"""Attention that the last prompt token gives to the needle number, per layer and head, mean
over random needle prompts (the paper's Fig. 7/8). Writes attention.{json,png,md} into --out.

  python -m experiments.eval_attention --models=runs/ssmax_needle --context_length=8000
"""
from absl import flags

from ssmax_jax.cli import eval_flags as ec
from ssmax_jax.evals import runner
from ssmax_jax.cli import program

MULTIPLE = flags.DEFINE_float("multiple", 8.0, "Context length as a multiple of l_train.")
LENGTH = flags.DEFINE_integer("context_length", 0, "Context length in tokens (the paper: 8000); "
                              "replaces --multiple.")
TRIALS = flags.DEFINE_integer("trials", 100, "Needle prompts (random city, number, depth).",
                              lower_bound=1)
THETA_SCALE = flags.DEFINE_float("theta_scale", 50.0, "RoPE theta multiple of the model's.")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 4, "Prompts per forward.", lower_bound=1)
TOP_K = flags.DEFINE_integer("top_k", 10, "Heads shown in the plot and table.", lower_bound=1)
ec.positive("multiple")
ec.positive("theta_scale")
ec.positive("context_length", strict=False)


def _main(argv):
  del argv
  doc = ec.run(lambda: runner.run_attention(
      ec.MODELS.value, ec.OUT.value, multiple=MULTIPLE.value, length=LENGTH.value,
      trials=TRIALS.value, theta_scale=THETA_SCALE.value, batch_size=BATCH_SIZE.value,
      seed=ec.SEED.value, top_k=TOP_K.value, data_source=ec.DATA_SOURCE.value,
      implementation=ec.implementation(), memory_limit_gb=ec.MEMORY_LIMIT_GB.value,
      show_progress=ec.PROGRESS.value))
  for entry in doc["results"]:
    top = ", ".join(f"L{h['layer']}H{h['head']}={h['mean']:.3f}"
                    for h in entry["result"]["top_heads"][:5])
    print(f"{entry['label']:24s} top heads: {top}")


def main():
  program.run(_main, __doc__, __name__)


if __name__ == "__main__":
  main()
