"""Small corpora for the prep_data tests: a byte-level BPE tokenizer.json trained offline on a
few strings, and JSONL / Parquet files of documents."""
import json

TEXTS = ('To be, or not to be, that is the question.', 'Brevity is the soul of wit.',
         'Now is the winter of our discontent made glorious summer by this sun of York.',
         "All the world's a stage, and all the men and women merely players.")
EOT = '</s>'


def write_tokenizer(path, vocab_size=300) -> str:
  """Trains a byte-level BPE (lossless decode) on TEXTS with specials <unk>, </s>; saves it."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE(unk_token='<unk>'))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=['<unk>', EOT],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(list(TEXTS) * 4, trainer)
  tok.save(str(path))
  return str(path)


def documents(n: int) -> list[str]:
  return [f'{TEXTS[i % len(TEXTS)]} ({i})' for i in range(n)]


def write_jsonl(path, docs, field='text') -> str:
  with open(path, 'w') as f:
    for i, doc in enumerate(docs):
      f.write(json.dumps({field: doc, 'id': i}) + '\n')
      if i == 1:
        f.write('\n')  # blank lines are no documents
  return str(path)


def write_parquet(path, docs, column='text') -> str:
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({column: docs, 'id': list(range(len(docs)))}), str(path),
                 row_group_size=7)
  return str(path)
