r"""Tokenises a glob of text files into flat token files for training.

  python -m experiments.prep_data --glob='DOCS/**/*.txt' --tokenizer=gpt2 --out=DIR \
      [--val_fraction=0.01] [--workers=8] [--seed=0]

Writes DIR/train.bin, DIR/val.bin (one document per file, each followed by EOT; uint16 for
vocab < 65536) and DIR/index.json; train with source=DIR and the same tokenizer.
"""

import os

from absl import flags

from ssmax_jax.data import sources
from ssmax_jax.cli import program

_GLOB = flags.DEFINE_string('glob', None, "Files to tokenise; '**' recurses.", required=True)
_TOKENIZER = flags.DEFINE_enum('tokenizer', 'gpt2', ['byte', 'gpt2'], 'Tokenizer name.')
_OUT = flags.DEFINE_string('out', None, 'Output directory.', required=True)
_VAL_FRACTION = flags.DEFINE_float('val_fraction', 0.0, 'Fraction of files held out.')
_WORKERS = flags.DEFINE_integer('workers', os.cpu_count() or 1, 'Tokenising processes.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the train/validation file split.')


def _main(argv):
  del argv
  index = sources.prepare_text_files(_GLOB.value, _TOKENIZER.value, _OUT.value,
                                     val_fraction=_VAL_FRACTION.value, num_workers=_WORKERS.value,
                                     seed=_SEED.value)
  for split, entry in index['splits'].items():
    print(f"{split}: {entry['num_docs']} documents, {entry['num_tokens']} tokens "
          f"({index['dtype']}) -> {os.path.join(_OUT.value, entry['file'])}")


def main():
  program.run(_main, __doc__, __name__)


if __name__ == "__main__":
  main()
