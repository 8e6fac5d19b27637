"""Moved to ssmax_jax.reproduce (run, plan, corpus, summary, variants); this path stays for one
release."""
# pylint: disable=unused-import
from ssmax_jax.reproduce.corpus import corpus_glob, prepare_corpus
from ssmax_jax.reproduce.plan import (Phase, check_plan, needle_finetune_phase, plan, split_config,
                                      steps_for)
from ssmax_jax.reproduce.run import run, train_phase
from ssmax_jax.reproduce.summary import VERSION_PACKAGES, device_info, versions
from ssmax_jax.reproduce.variants import (FORMAT, NEEDLE_SUFFIX, OUTPUT_FILES, PRODUCED_BY,
                                          RUNNABLE, SUMMARY_FILE)
from ssmax_jax.reproduce.variants import check_runnable as check_variant
