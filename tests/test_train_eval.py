"""The daily loop's training side: model.vocab_size from the data, validation during training,
a JSONL + tokenizer.json corpus end to end, TensorBoard tags and the logged config."""
import json
import os
import struct

import pytest

from ssmax_jax import data
from ssmax_jax.configs import paper_162m, test_tiny, tiny
from ssmax_jax.train import model_config, read_metrics, train
from ssmax_jax.train.config import resolve_vocab_size
from tests import corpus_files as cf


def _config(**groups):
  c = test_tiny.get_config()
  for group, values in groups.items():
    c[group].update(**values)
  return c


def _tensorboard_events(workdir):
  """{tag: [(step, value)]} of the scalars and the text tags of workdir/tensorboard."""
  from tensorboardX.proto import event_pb2
  tags = {}
  tb = os.path.join(workdir, 'tensorboard')
  for name in sorted(os.listdir(tb)):
    with open(os.path.join(tb, name), 'rb') as f:
      while header := f.read(12):  # TFRecord: u64 length, u32 crc, data, u32 crc
        (length,) = struct.unpack('<Q', header[:8])
        event = event_pb2.Event.FromString(f.read(length))
        f.read(4)
        for value in event.summary.value:
          tags.setdefault(value.tag, []).append((event.step, value.simple_value))
  return tags


def test_vocab_size_unset_takes_the_data_vocabulary():
  assert tiny.get_config().model.vocab_size is None
  assert resolve_vocab_size(tiny.get_config()).model.vocab_size == 257  # byte, as before
  assert model_config(test_tiny.get_config()).vocab_size == 257
  gpt2 = _config(data=dict(tokenizer='gpt2'))
  assert resolve_vocab_size(gpt2).model.vocab_size == 50257
  assert resolve_vocab_size(paper_162m.get_config()).model.vocab_size == 50257


def test_vocab_size_smaller_than_the_data_errors_naming_both(tmp_path):
  with pytest.raises(ValueError, match=r"vocab_size=100 is smaller than the 'byte' tokenizer's "
                     r"257 ids .*unset to take 257, or set it >= 257"):
    train(_config(model=dict(vocab_size=100)), str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


def test_vocab_size_larger_than_the_data_is_allowed(tmp_path):
  config = _config(model=dict(vocab_size=300), train=dict(num_steps=1, log_every=1))
  assert resolve_vocab_size(config).model.vocab_size == 300
  train(config, str(tmp_path))
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['model']['vocab_size'] == 300


def test_eval_every_writes_eval_loss_and_eval_tags_and_keeps_the_training_loss(tmp_path):
  log = dict(num_steps=4, log_every=1)
  train(_config(train=dict(eval_every=2, eval_batches=2, **log)), str(tmp_path / 'eval'))
  train(_config(train=log), str(tmp_path / 'plain'))
  records, plain = read_metrics(str(tmp_path / 'eval')), read_metrics(str(tmp_path / 'plain'))
  assert [r['loss'] for r in records] == [r['loss'] for r in plain]  # eval draws no training RNG
  assert [r['step'] for r in records if 'eval_loss' in r] == [2, 4]
  assert records[-1]['eval_loss'] < records[1]['eval_loss']
  assert [r['tokens_seen'] for r in records] == [256, 512, 768, 1024]  # 8 x 32 per step
  tags = _tensorboard_events(str(tmp_path / 'eval'))
  assert [s for s, _ in tags['eval/loss']] == [2, 4]
  assert {'train/loss', 'train/grad_norm', 'train/tokens_seen', 'train/s/layer1/head1',
          'config/text_summary', 'hparams/text_summary'} <= set(tags)  # tensorboardX's names
  assert not any(t in tags for t in ('loss', 'eval_loss'))  # every scalar under train/, eval/


def test_eval_every_without_a_validation_split_errors_before_training(tmp_path):
  for i, doc in enumerate(cf.documents(3)):
    (tmp_path / f'{i}.txt').write_text(doc * 20)
  source = str(tmp_path / 'prepared')
  data.prepare_text_files(str(tmp_path / '*.txt'), 'byte', source, val_fraction=0.0)
  config = _config(data=dict(source=source), train=dict(eval_every=5))
  with pytest.raises(ValueError, match=r"eval_every=5 needs the validation split.*lacks split "
                     r"'validation'.*eval_every=0"):
    train(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


def test_jsonl_and_tokenizer_json_prep_then_a_3_step_train_with_eval(tmp_path):
  tokenizer = cf.write_tokenizer(tmp_path / 'tokenizer.json')
  jsonl = cf.write_jsonl(tmp_path / 'docs.jsonl', cf.documents(120))
  source = str(tmp_path / 'prepared')
  index = data.prepare_text_files(jsonl, tokenizer, source, eot_token=cf.EOT)
  assert index['splits']['validation']['num_docs'] == 1
  config = _config(data=dict(source=source, tokenizer=os.path.join(source, 'tokenizer.json')),
                   train=dict(num_steps=3, log_every=1, eval_every=3, eval_batches=1))
  result = train(config, str(tmp_path / 'run'))
  assert result['step'] == 3
  records = read_metrics(str(tmp_path / 'run'))
  assert records[-1]['eval_loss'] > 0 and 'eval_loss' not in records[0]
  with open(tmp_path / 'run' / 'config.json') as f:
    assert json.load(f)['model']['vocab_size'] == index['vocab_size']  # unset: the data's
