"""Gathers the evaluation results (JSON from experiments.eval_*) under any run directories into
one markdown page with tables and links to the figures.

  python -m experiments.report --runs=runs/eval,runs/ssmax/eval --out=runs/eval/report.md
"""
import os
import sys

from absl import flags

from ssmax_jax.evals import report
from ssmax_jax.cli import program

RUNS = flags.DEFINE_list("runs", None, "Directories searched (recursively) for results.")
OUT = flags.DEFINE_string("out", "eval_report.md", "Markdown file to write (docs/results.md is "
                          "written by experiments.reproduce_report).")
flags.mark_flag_as_required("runs")


def _main(argv):
  del argv
  if os.path.isdir(OUT.value):
    sys.exit(f"error: --out={OUT.value} is a directory: name the markdown file to write, e.g. "
             f"--out={os.path.join(OUT.value, 'eval_report.md')}.")
  try:
    found = report.gather(RUNS.value)
    report.render(found, OUT.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"wrote {OUT.value} from {len(found)} result files")


def main():
  program.run(_main, __doc__, __name__)


if __name__ == "__main__":
  main()
