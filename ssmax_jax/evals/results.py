"""Moved to ssmax_jax.reproduce (page, claims, seeds, summary, metrics, variants); this path
stays for one release."""
# pylint: disable=unused-import
from ssmax_jax.reproduce.claims import (CLAIMS, CLEAR, FAILS, FLAT, NEEDLE_MULTIPLE, RETRIEVES,
                                        claims)
from ssmax_jax.reproduce.figure import plot_comparison
from ssmax_jax.reproduce.metrics import LONG_THETA, key, measure, measure_name, model_metrics
from ssmax_jax.reproduce.page import CODE_KEYS, render
from ssmax_jax.reproduce.seeds import gather_repeats, seed_groups, seed_spread, seeds
from ssmax_jax.reproduce.summary import gather, read_summary, rows
from ssmax_jax.reproduce.variants import MIN_SEQ_LEN, MIN_TOKENS, SUMMARY_FILE, command_for
from ssmax_jax.reproduce.variants import FORMAT as SUMMARY_FORMAT
from ssmax_jax.reproduce.variants import PAPER_VARIANTS as VARIANTS
from ssmax_jax.reproduce.variants import PRODUCED_BY as CALL
