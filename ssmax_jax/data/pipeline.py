"""grain pipeline: token corpus -> pieces -> seeded shuffle -> host shard -> packing -> batches.

A document (ending with EOT) of L tokens is cut into pieces of at most seq_len + 1 tokens that
overlap by one token, so each of its L - 1 next-token predictions lands in exactly one piece.
A piece becomes `inputs` = piece[:-1], `targets` = piece[1:].

packing=True: pieces are packed first-fit into rows of seq_len; each piece is a segment, so
  attention (and SSMax's n) restarts per document chunk.
packing=False: documents are concatenated (EOT-separated) into one stream cut into rows,
  nanoGPT style; one segment per row, attention crosses document boundaries.

Batch (dict of numpy arrays, B = global_batch_size // shard_count, T = seq_len):
  inputs [B,T] int32, targets [B,T] int32,
  segment_ids [B,T] int32  1, 2, ... per segment within each row, 0 on padding,
  positions [B,T] int32    0, 1, ... restarting at each segment, 0 on padding,
  loss_mask [B,T] float32  1 where segment_ids > 0, else 0.
"""

import grain
import numpy as np

from ssmax_jax.data.sources import TokenCorpus, load_corpus
from ssmax_jax.data.tokenizers import get_tokenizer

BATCH_KEYS = ('inputs', 'targets', 'segment_ids', 'positions', 'loss_mask')


def piece_bounds(doc_starts: np.ndarray, seq_len: int) -> np.ndarray:
  """Returns [P, 2] int64 (start, end) token ranges: every document cut into pieces of at most
  seq_len + 1 tokens overlapping by one (documents of one token give none)."""
  starts, ends = doc_starts[:-1], doc_starts[1:]
  counts = np.maximum(ends - starts - 1 + seq_len - 1, 0) // seq_len  # ceil((L - 1) / seq_len)
  doc = np.repeat(np.arange(len(counts)), counts)
  first = np.concatenate([[0], np.cumsum(counts)[:-1]])
  piece_start = starts[doc] + (np.arange(len(doc)) - first[doc]) * seq_len
  piece_end = np.minimum(piece_start + seq_len + 1, ends[doc])
  return np.stack([piece_start, piece_end], axis=1).astype(np.int64)


class _ReadPiece:
  """Piece index -> {'inputs': [l] int32, 'targets': [l] int32}, l <= seq_len. Picklable."""

  def __init__(self, corpus: TokenCorpus, bounds_X2: np.ndarray):
    self.corpus, self.bounds_X2 = corpus, bounds_X2

  def __call__(self, index: int) -> dict:
    start, end = self.bounds_X2[index]
    piece = np.asarray(self.corpus.tokens[start:end], dtype=np.int32)
    return {'inputs': piece[:-1], 'targets': piece[1:]}


def _pad_row(seq_len: int):
  def pad(piece: dict) -> dict:
    n = len(piece['inputs'])
    row = {k: np.pad(v, (0, seq_len - n)) for k, v in piece.items()}
    row['segment_ids'] = (np.arange(seq_len) < n).astype(np.int32)
    row['positions'] = np.where(row['segment_ids'] > 0, np.arange(seq_len), 0).astype(np.int32)
    return row
  return pad


def _packed_row(row: dict) -> dict:
  return {'inputs': row['inputs'], 'targets': row['targets'],
          'segment_ids': row['inputs_segment_ids'], 'positions': row['inputs_positions']}


def _with_loss_mask(batch: dict) -> dict:
  batch = {k: np.asarray(batch[k], np.int32) for k in BATCH_KEYS[:4]}
  batch['loss_mask'] = (batch['segment_ids'] > 0).astype(np.float32)
  return batch


def _check_args(seq_len, global_batch_size, shard_index, shard_count, worker_count=0):
  if seq_len < 1:
    raise ValueError(f'seq_len must be >= 1, got {seq_len}.')
  if shard_count < 1 or not 0 <= shard_index < shard_count:
    raise ValueError(f'need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}.')
  if global_batch_size < 1 or global_batch_size % shard_count:
    raise ValueError(f'global_batch_size {global_batch_size} must be a positive multiple of '
                     f'shard_count {shard_count} (one equal slice per host).')
  if worker_count < 0:
    raise ValueError(f'worker_count must be >= 0, got {worker_count}.')


def _rows(corpus: TokenCorpus, seq_len: int, shard_index: int, shard_count: int, packing: bool,
          seed: int | None, local_batch: int) -> grain.IterDataset:
  """Rows (dicts of [T] arrays, no loss mask) of this host's shard; endless if seed is given."""
  doc_starts = corpus.doc_starts if packing else np.asarray([0, corpus.num_tokens])
  bounds_X2 = piece_bounds(doc_starts, seq_len)
  if len(bounds_X2) < shard_count:
    raise ValueError(f'corpus has {len(bounds_X2)} pieces of seq_len {seq_len}, fewer than '
                     f'shard_count {shard_count}: use more data.')
  ds = grain.MapDataset.range(len(bounds_X2))[shard_index::shard_count]
  if seed is not None:
    ds = ds.shuffle(seed=seed).repeat()  # a new permutation every epoch
  ds = ds.map(_ReadPiece(corpus, bounds_X2)).to_iter_dataset()
  if not packing:
    return ds.map(_pad_row(seq_len))
  packed = grain.experimental.FirstFitPackIterDataset(
      ds, length_struct={'inputs': seq_len, 'targets': seq_len},
      num_packing_bins=max(local_batch, 8), seed=0 if seed is None else seed,
      shuffle_bins=seed is not None)
  return packed.map(_packed_row)


def make_train_iterator(source: str, tokenizer: str, seq_len: int, global_batch_size: int, *,
                        shard_index: int = 0, shard_count: int = 1, seed: int = 0,
                        packing: bool = True, worker_count: int = 0,
                        split: str = 'train') -> grain.DatasetIterator:
  """Returns an endless, checkpointable iterator of this host's batches (format: module doc).

  source: 'shakespeare', a prep_data directory, a nanoGPT train.bin/val.bin directory, or a flat
  token file (sources.load_corpus). tokenizer: 'byte' | 'gpt2'. Pieces are reshuffled every
  epoch from `seed`; host shard_index gets pieces shard_index::shard_count (disjoint).
  worker_count > 0 reads in that many grain processes (absl flags must be parsed; done here if
  not); the batch order then depends on worker_count, so restore with the same count.
  Save/restore with it.get_state() / it.set_state(state) (a JSON-able dict), or through orbax
  with grain.checkpoint.CheckpointSave(it) / CheckpointRestore(it).
  """
  _check_args(seq_len, global_batch_size, shard_index, shard_count, worker_count)
  corpus = load_corpus(source, get_tokenizer(tokenizer), split)
  local_batch = global_batch_size // shard_count
  ds = _rows(corpus, seq_len, shard_index, shard_count, packing, seed, local_batch)
  ds = ds.batch(local_batch, drop_remainder=True).map(_with_loss_mask)
  if worker_count > 0:
    from absl import flags  # grain's worker processes read absl flags
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(ds)


def _empty_batch(batch_size: int, seq_len: int) -> dict:
  batch = {k: np.zeros((batch_size, seq_len), np.int32) for k in BATCH_KEYS[:4]}
  batch['loss_mask'] = np.zeros((batch_size, seq_len), np.float32)
  return batch


def make_eval_batches(source: str, tokenizer: str, seq_len: int, global_batch_size: int, *,
                      shard_index: int = 0, shard_count: int = 1, packing: bool = True,
                      num_batches: int | None = None, split: str = 'validation') -> list[dict]:
  """Returns this host's batches of one ordered pass over `split` (no shuffling).

  The last batch is filled with empty rows (loss_mask 0). num_batches, if given, truncates or
  pads (with all-empty batches) to exactly that many, so every host runs the same step count.
  """
  _check_args(seq_len, global_batch_size, shard_index, shard_count)
  corpus = load_corpus(source, get_tokenizer(tokenizer), split)
  local_batch = global_batch_size // shard_count
  rows = list(_rows(corpus, seq_len, shard_index, shard_count, packing, None, local_batch))
  batches = []
  for i in range(0, len(rows), local_batch):
    chunk = rows[i:i + local_batch]
    batch = _empty_batch(local_batch, seq_len)
    for k in BATCH_KEYS[:4]:
      batch[k][:len(chunk)] = np.stack([r[k] for r in chunk])
    batch['loss_mask'] = (batch['segment_ids'] > 0).astype(np.float32)
    batches.append(batch)
    if num_batches is not None and len(batches) == num_batches:
      break
  while num_batches is not None and len(batches) < num_batches:
    batches.append(_empty_batch(local_batch, seq_len))
  return batches


def examples_to_batch(examples: list[dict], seq_len: int) -> dict:
  """Batches retrieval examples (dicts with tokens [L] and loss_mask [L], L <= seq_len + 1) into
  the batch format with one segment per row: loss_mask = example loss_mask[1:] (answer targets
  only), padding after. Returns the batch dict with B = len(examples)."""
  batch = _empty_batch(len(examples), seq_len)
  for b, ex in enumerate(examples):
    n = len(ex['tokens']) - 1
    if not 1 <= n <= seq_len:
      raise ValueError(f'example {b} has {n + 1} tokens; needs 2..seq_len + 1 = {seq_len + 1}.')
    batch['inputs'][b, :n] = ex['tokens'][:-1]
    batch['targets'][b, :n] = ex['tokens'][1:]
    batch['segment_ids'][b, :n] = 1
    batch['positions'][b, :n] = np.arange(n)
    batch['loss_mask'][b, :n] = ex['loss_mask'][1:]
  return batch
