"""Data layer: tokenizers, corpora, long-range retrieval examples and the grain pipeline.

Stands beside the model layers; imports nothing else from ssmax_jax. The pipeline's names load
grain on first use, so the tokenizers and corpora work without the [train] extra.
"""
import importlib

from ssmax_jax.data.retrieval import CITIES
from ssmax_jax.data.retrieval import kv_retrieval_example
from ssmax_jax.data.retrieval import needle_example
from ssmax_jax.data.sources import TokenCorpus
from ssmax_jax.data.sources import load_corpus
from ssmax_jax.data.sources import prepare_text_files
from ssmax_jax.data.sources import prepare_text_files_cached
from ssmax_jax.data.sources import read_token_file
from ssmax_jax.data.sources import shakespeare_corpus
from ssmax_jax.data.tokenizers import Tokenizer
from ssmax_jax.data.tokenizers import get_tokenizer

_PIPELINE = ("examples_to_batch", "make_eval_batches", "make_train_iterator")


def __getattr__(name):
  if name in _PIPELINE:
    return getattr(importlib.import_module("ssmax_jax.data.pipeline"), name)
  if name == "pipeline":
    return importlib.import_module("ssmax_jax.data.pipeline")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_PIPELINE) | {"pipeline"})
