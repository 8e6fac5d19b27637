"""Data layer: tokenizers, corpora, long-range retrieval examples and the grain pipeline.

Stands beside the model layers; imports nothing else from ssmax_jax.
"""

from ssmax_jax.data.pipeline import examples_to_batch
from ssmax_jax.data.pipeline import make_eval_batches
from ssmax_jax.data.pipeline import make_train_iterator
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
