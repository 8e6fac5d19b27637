"""prep_data's inputs (text, JSONL, Parquet), tokenizers (tokenizer.json) and default split."""
import hashlib
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from ssmax_jax import data
from tests import corpus_files as cf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def tokenizer_path(tmp_path_factory):
  return cf.write_tokenizer(tmp_path_factory.mktemp('tok') / 'tokenizer.json')


def _decoded_docs(directory, tokenizer):
  docs = {}
  for split in ('train', 'validation'):
    corpus = data.load_corpus(directory, tokenizer, split)
    for d in range(corpus.num_docs):
      assert corpus.doc(d)[-1] == tokenizer.eot_id
      docs[tokenizer.decode(corpus.doc(d)[:-1])] = split
  return docs


def test_tokenizer_json_round_trips_and_names_its_eot(tokenizer_path):
  tok = data.get_tokenizer(tokenizer_path, cf.EOT)
  text = 'Brevity is the soul of wit. Héllo ✓'
  assert tok.decode(tok.encode(text)) == text
  assert tok.eot_id == 1 and tok.vocab_size <= 300
  assert data.get_tokenizer(tokenizer_path).eot_token == cf.EOT  # found among EOT_CANDIDATES
  with pytest.raises(ValueError, match="eot_token '<nope>' is not in the vocabulary"):
    data.get_tokenizer(tokenizer_path, '<nope>')


def test_jsonl_with_tokenizer_json_round_trip_through_prep_data(tmp_path, tokenizer_path):
  docs = cf.documents(40)
  jsonl = cf.write_jsonl(tmp_path / 'docs.jsonl', docs, field='body')
  out = tmp_path / 'out'
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.prep_data', f'--glob={jsonl}', '--jsonl_field=body',
       f'--tokenizer={tokenizer_path}', f'--eot_token={cf.EOT}', f'--out={out}', '--workers=2'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert f'--config.data.tokenizer={out}/tokenizer.json' in proc.stdout
  index = json.loads((out / 'index.json').read_text())
  copy = out / 'tokenizer.json'
  assert index['tokenizer_sha256'] == hashlib.sha256(copy.read_bytes()).hexdigest()
  assert (index['input_format'], index['field'], index['eot_token']) == ('jsonl', 'body', cf.EOT)
  tok = data.get_tokenizer(str(copy))  # the copy: its eot_token read from index.json
  assert (tok.eot_id, tok.vocab_size) == (index['eot_id'], index['vocab_size'])
  read = _decoded_docs(str(out), tok)
  assert sorted(read) == sorted(docs)
  assert list(read.values()).count('validation') == 1  # 1% of 40 documents, at least one


def test_prepared_directory_refuses_another_tokenizer_json(tmp_path, tokenizer_path):
  out = tmp_path / 'out'
  data.prepare_text_files(cf.write_jsonl(tmp_path / 'd.jsonl', cf.documents(5)), tokenizer_path,
                          str(out), eot_token=cf.EOT)
  other = cf.write_tokenizer(tmp_path / 'other.json', vocab_size=280)
  with pytest.raises(ValueError, match='prepared with tokenizer the tokenizer.json now at'):
    data.load_corpus(str(out), data.get_tokenizer(other), 'train')
  data.prepare_text_files(cf.write_jsonl(tmp_path / 'b.jsonl', cf.documents(5)), 'byte',
                          str(tmp_path / 'b'))
  with pytest.raises(ValueError, match="prepared with tokenizer 'byte'"):
    data.load_corpus(str(tmp_path / 'b'), data.get_tokenizer(tokenizer_path), 'train')


def test_parquet_column_round_trip(tmp_path):
  pytest.importorskip('pyarrow')
  docs = cf.documents(30)
  parquet = cf.write_parquet(tmp_path / 'docs.parquet', docs, column='content')
  out = str(tmp_path / 'out')
  index = data.prepare_text_files(parquet, 'byte', out, field='content', val_fraction=0.1)
  assert index['input_format'] == 'parquet'
  assert [index['splits'][s]['num_docs'] for s in ('train', 'validation')] == [27, 3]
  assert sorted(_decoded_docs(out, data.get_tokenizer('byte'))) == sorted(docs)
  with pytest.raises(ValueError, match=r"no column 'text' \(its columns: \['content', 'id'\]\)"
                     ".*--parquet_column"):
    data.prepare_text_files(parquet, 'byte', str(tmp_path / 'o2'))


def test_jsonl_errors_name_the_flag(tmp_path):
  jsonl = cf.write_jsonl(tmp_path / 'd.jsonl', cf.documents(3), field='body')
  with pytest.raises(ValueError, match=r"line 1 has no field 'text'.*--jsonl_field"):
    data.prepare_text_files(jsonl, 'byte', str(tmp_path / 'o'))
  (tmp_path / 'bad.jsonl').write_text('{"text": "a"}\n{"text": \n')
  with pytest.raises(ValueError, match='bad.jsonl line 2 is not JSON'):
    data.prepare_text_files(str(tmp_path / 'bad.jsonl'), 'byte', str(tmp_path / 'o'))


def test_default_validation_split_exists_and_evaluations_find_it(tmp_path):
  for i, doc in enumerate(cf.documents(3)):
    (tmp_path / f'{i}.txt').write_text(doc * 20)
  out = str(tmp_path / 'out')
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.prep_data', f'--glob={tmp_path}/*.txt',
       '--tokenizer=byte', f'--out={out}', '--workers=1'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  index = json.loads(open(os.path.join(out, 'index.json')).read())
  assert index['splits']['validation']['num_docs'] == 1
  batches = data.make_eval_batches(out, 'byte', 32, 4, num_batches=2)
  assert len(batches) == 2 and batches[0]['loss_mask'].sum() > 0


def test_one_document_warns_and_writes_train_only(tmp_path):
  (tmp_path / 'only.txt').write_text('one document')
  out = tmp_path / 'out'
  with pytest.warns(UserWarning, match='no validation split'):
    index = data.prepare_text_files(str(tmp_path / '*.txt'), 'byte', str(out))
  assert list(index['splits']) == ['train'] and not (out / 'val.bin').exists()
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # val_fraction=0 asks for no split: no warning
    data.prepare_text_files(str(tmp_path / '*.txt'), 'byte', str(out), val_fraction=0.0)
  assert np.array_equal(np.fromfile(out / 'train.bin', np.uint16)[-1:], [256])
