"""Gathers the summaries of finished `experiments.reproduce` runs into docs/results.md: tables of
the eight variants (not run where absent), the paper's claims with a verdict each, commands,
versions and devices; with --repeats, the seed repeats and a check of every verdict's margins
against their spread.

  python -m experiments.reproduce_report --results=docs/results/h200_small/softmax,... \
      [--repeats=docs/results/h200_small/ssmax_seed1] --out=docs/results.md
"""
import shlex
import sys

from absl import app
from absl import flags

from ssmax_jax.reproduce import claims, page, seeds, summary, variants
from ssmax_jax.cli import program

RESULTS = flags.DEFINE_list("results", [], "--out directories of experiments.reproduce runs "
                            "(none: the page with every variant not run).")
REPEATS = flags.DEFINE_list("repeats", [], "--out directories of runs that train a variant of "
                            "--results again with other --config.seed and --config.data.seed.")
OUT = flags.DEFINE_string("out", "docs/results.md", "Markdown file to write.")
MIN_TOKENS = flags.DEFINE_float("min_tokens", variants.MIN_TOKENS,
                                "Training tokens below which a variant counts as not run.")
MIN_SEQ_LEN = flags.DEFINE_integer("min_seq_len", variants.MIN_SEQ_LEN,
                                   "Sequence length below which a variant counts as not run.")


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  command = "python -m experiments.reproduce_report " + shlex.join(sys.argv[1:])
  try:
    found = summary.gather(RESULTS.value)
    repeats = seeds.gather_repeats(found, REPEATS.value)
    page.render(found, OUT.value, repeats=repeats, min_tokens=MIN_TOKENS.value,
                min_seq_len=MIN_SEQ_LEN.value, command=command)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  rws = summary.rows(found, MIN_TOKENS.value, MIN_SEQ_LEN.value)
  verdicts = claims.claims(rws, seeds.seed_groups(rws, repeats, MIN_TOKENS.value,
                                                  MIN_SEQ_LEN.value))
  print(f"wrote {OUT.value} from {len(found)} result directories and {len(repeats)} seed "
        "repeats; claims: " + ", ".join(
            c["verdict"] + (" (margins within seed noise)" if c["within_noise"] else "")
            for c in verdicts))


def main():
  program.run(_main, __doc__, __name__)


if __name__ == "__main__":
  main()
