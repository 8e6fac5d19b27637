r"""Tokenises text files, JSONL or Parquet into flat token files for training.

  python -m experiments.prep_data --glob='DOCS/**/*.txt' --tokenizer=gpt2 --out=DIR \
      [--val_fraction=0.01] [--workers=8] [--seed=0]
  python -m experiments.prep_data --glob='shards/*.jsonl' --jsonl_field=text \
      --tokenizer=PATH/tokenizer.json --eot_token='</s>' --out=DIR
  python -m experiments.prep_data --glob='shards/*.parquet' --parquet_column=text ...

Documents: one per text file, per JSONL line (its --jsonl_field) or per Parquet row (its
--parquet_column; needs pyarrow, in the [data] extra); the format comes from the glob's extension
unless --format says. --tokenizer: 'byte', 'gpt2' or a Hugging Face tokenizer.json (copied into
DIR with its sha256; --eot_token names its end-of-text token). --val_fraction of the documents
(at least one when there are >= 2) is held out as the validation split.

Writes DIR/train.bin, DIR/val.bin (every document followed by EOT; uint16 for vocab < 65536) and
DIR/index.json; train with data.source=DIR and the same tokenizer (a tokenizer.json: DIR's copy).
model.vocab_size, unset, takes the tokenizer's vocabulary.
"""

import os
import sys

from absl import flags

from ssmax_jax.data import sources
from ssmax_jax.cli import program
from ssmax_jax.data import tokenizers

_GLOB = flags.DEFINE_string('glob', None, "Files to tokenise; '**' recurses.", required=True)
_FORMAT = flags.DEFINE_enum('format', 'auto', list(sources.INPUT_FORMATS),
                            "Input format; 'auto': .jsonl/.ndjson, .parquet, else text.")
_JSONL_FIELD = flags.DEFINE_string('jsonl_field', 'text', 'JSONL: the field holding the text.')
_PARQUET_COLUMN = flags.DEFINE_string('parquet_column', 'text',
                                      'Parquet: the column holding the text.')
_TOKENIZER = flags.DEFINE_string('tokenizer', 'gpt2',
                                 "'byte', 'gpt2' or the path of a Hugging Face tokenizer.json.")
_EOT_TOKEN = flags.DEFINE_string(
    'eot_token', None, 'tokenizer.json: its end-of-text token, appended to every document '
    f'(default: the first of {tokenizers.EOT_CANDIDATES} it has).')
_OUT = flags.DEFINE_string('out', None, 'Output directory.', required=True)
_VAL_FRACTION = flags.DEFINE_float('val_fraction', sources.DEFAULT_VAL_FRACTION,
                                   'Fraction of documents held out for validation (0: none).')
_WORKERS = flags.DEFINE_integer('workers', os.cpu_count() or 1, 'Tokenising processes.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the train/validation document split.')


def _field(fmt: str) -> str:
  return _PARQUET_COLUMN.value if fmt == 'parquet' else _JSONL_FIELD.value


def _train_command(index: dict) -> str:
  tokenizer = index['tokenizer']
  if index.get('tokenizer_file'):
    tokenizer = os.path.join(_OUT.value, index['tokenizer_file'])
  return (f'python -m experiments.train --config=configs/tiny.py --workdir=WORKDIR '
          f'--config.data.source={_OUT.value} --config.data.tokenizer={tokenizer}')


def _main(argv):
  del argv
  try:
    fmt = sources.input_format(_GLOB.value, _FORMAT.value)
    index = sources.prepare_text_files(
        _GLOB.value, _TOKENIZER.value, _OUT.value, val_fraction=_VAL_FRACTION.value,
        num_workers=_WORKERS.value, seed=_SEED.value, input_format_name=fmt, field=_field(fmt),
        eot_token=_EOT_TOKEN.value)
  except ValueError as e:
    sys.exit(f'error: {e}')
  for split, entry in index['splits'].items():
    print(f"{split}: {entry['num_docs']} documents, {entry['num_tokens']} tokens "
          f"({index['dtype']}) -> {os.path.join(_OUT.value, entry['file'])}")
  print(f"vocabulary {index['vocab_size']}, end of text {index['eot_id']}; train with:\n  "
        + _train_command(index))


def main():
  program.run(_main, __doc__, __name__)


if __name__ == "__main__":
  main()
