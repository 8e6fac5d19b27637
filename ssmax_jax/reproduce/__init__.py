"""The paper's reproduction: one command per variant (train, fine-tune on needles, evaluate,
summarise), and the results page with a verdict per claim of the paper.

  variants     the eight variants, which call produces each, the summary's format and files
  plan         a call's training phases and the models each evaluation reads; checks before compute
  corpus       the training corpus, prepared once and reused
  run          run(config, variant, out_dir): one call, end to end
  metrics      the numbers of a call's evaluations, and the measures the claims compare
  outputs      the evaluation files and figures a call writes
  summary      summary.json: written by a call, gathered into the page's rows
  claims       the verdict rules, fixed before any result
  seeds        seed repeats: the page's measure of noise
  figure, page the results page (docs/results.md) and its figure
  provenance   the digest of the sources that ran and the commit they came from

Command lines: experiments/reproduce.py, experiments/reproduce_report.py (docs/reproduce.md).
It builds on ssmax_jax.evals and ssmax_jax.train; neither imports it.
"""
from ssmax_jax.reproduce import (claims, corpus, figure, metrics, outputs, page, plan, provenance,
                                 run, seeds, summary, variants)
