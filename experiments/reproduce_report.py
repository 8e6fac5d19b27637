"""Gathers the summaries of finished `experiments.reproduce` runs into docs/results.md: tables of
the eight variants (not run where absent), the paper's claims with a verdict each, commands,
versions and devices.

  python -m experiments.reproduce_report --results=docs/results/h200_small/softmax,... \
      --out=docs/results.md
"""
import shlex
import sys

from absl import app
from absl import flags

from ssmax_jax.evals import results

RESULTS = flags.DEFINE_list("results", [], "--out directories of experiments.reproduce runs "
                            "(none: the page with every variant not run).")
OUT = flags.DEFINE_string("out", "docs/results.md", "Markdown file to write.")
MIN_TOKENS = flags.DEFINE_float("min_tokens", results.MIN_TOKENS,
                                "Training tokens below which a variant counts as not run.")
MIN_SEQ_LEN = flags.DEFINE_integer("min_seq_len", results.MIN_SEQ_LEN,
                                   "Sequence length below which a variant counts as not run.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  command = "python -m experiments.reproduce_report " + shlex.join(sys.argv[1:])
  try:
    found = results.gather(RESULTS.value)
    results.render(found, OUT.value, min_tokens=MIN_TOKENS.value, min_seq_len=MIN_SEQ_LEN.value,
                   command=command)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  verdicts = results.claims(results.rows(found, MIN_TOKENS.value, MIN_SEQ_LEN.value))
  print(f"wrote {OUT.value} from {len(found)} result directories; claims: "
        + ", ".join(c["verdict"] for c in verdicts))


if __name__ == "__main__":
  app.run(main)
