"""Training batches: the grain language-model pipeline, or needle-retrieval examples."""
import grain
import jax
import numpy as np

from ssmax_jax import data


class _NeedleBatch:
  """Batch index -> a batch of needle examples on random haystacks of the corpus (picklable)."""

  def __init__(self, corpus, batch_size, seq_len, min_context, seed):
    self.corpus, self.batch_size, self.seq_len = corpus, batch_size, seq_len
    self.min_context, self.seed = min_context, seed

  def __call__(self, index):
    tokenizer = self.corpus.tokenizer
    rng = np.random.default_rng([*self.seed, index])
    examples = []
    for _ in range(self.batch_size):
      length = int(rng.integers(self.min_context, self.seq_len + 2))
      start = int(rng.integers(0, self.corpus.num_tokens - length))
      hay = np.asarray(self.corpus.tokens[start:start + length])
      examples.append(data.needle_example(tokenizer, hay, length, seed=rng))
    return data.examples_to_batch(examples, self.seq_len)


def _needle_iterator(config, local_batch, shard_index):
  d, seq_len = config.data, config.train.seq_len
  if not 2 <= d.needle_min_context <= seq_len + 1:
    raise ValueError(f"config.data.needle_min_context={d.needle_min_context} must be in "
                     f"[2, seq_len + 1 = {seq_len + 1}].")
  corpus = data.load_corpus(d.source, data.get_tokenizer(d.tokenizer), "train")
  if corpus.num_tokens <= seq_len + 2:
    raise ValueError(f"data source {d.source!r} has {corpus.num_tokens} tokens, too few for "
                     f"needle haystacks of seq_len {seq_len}.")
  tokenizer = data.get_tokenizer(d.tokenizer)
  try:  # the shortest context must hold the needle, question and answer
    data.needle_example(tokenizer, corpus.tokens[:d.needle_min_context], d.needle_min_context)
  except ValueError as e:
    raise ValueError(f"config.data.needle_min_context={d.needle_min_context} is too small for "
                     f"a needle example with the {d.tokenizer!r} tokenizer ({e}).") from None
  make = _NeedleBatch(corpus, local_batch, seq_len, d.needle_min_context,
                      seed=(d.seed, shard_index))
  ds = grain.MapDataset.range(1 << 40).map(make).to_iter_dataset()
  if d.worker_count > 0:
    from absl import flags  # grain's worker processes read absl flags
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=d.worker_count))
  return iter(ds)


def make_batches(config):
  """This process's endless, checkpointable iterator of batches (dicts of [B_local, T])."""
  index, count = jax.process_index(), jax.process_count()
  local_batch = config.train.batch_size // count
  if config.data.kind == "needle":
    return _needle_iterator(config, local_batch, index)
  return data.make_train_iterator(
      config.data.source, config.data.tokenizer, config.train.seq_len, config.train.batch_size,
      shard_index=index, shard_count=count, seed=config.data.seed, packing=config.data.packing,
      worker_count=config.data.worker_count)


def to_global(batch: dict, sharding) -> dict:
  """Host-local numpy batch -> global jax arrays laid out by `sharding`."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
