"""The learned s (and b) of every layer and head: learned_s.json, learned_s_<label>.png and
learned_s.md in --out.

  python -m experiments.eval_learned_s --models=runs/ssmax,runs/ssmax_bias --out=runs/eval
"""

from ssmax_jax.cli import eval_flags as ec
from ssmax_jax.evals import runner
from ssmax_jax.cli import program


def _main(argv):
  del argv
  doc = ec.run(lambda: runner.run_learned_s(ec.MODELS.value, ec.OUT.value))
  for entry in doc["results"]:
    s = entry["result"]["s"]
    line = "no learned s" if s is None else " ".join(
        f"L{i}:{sum(row) / len(row):.4f}" for i, row in enumerate(s))
    print(f"{entry['label']:24s} ({entry['result']['variant']}) mean s per layer: {line}")


def main():
  program.run(_main, __doc__, __name__)


if __name__ == "__main__":
  main()
