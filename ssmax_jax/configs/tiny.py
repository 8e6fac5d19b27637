"""The embedded default: a ~1.9M-parameter byte-level SSMax model on the Shakespeare plays that
ship inside ssmax_jax (ssmax_jax/data/shakespeare/); a few minutes on a 2-core CPU, then a sample.

  python -m experiments.train --config=configs/tiny.py --workdir=workdirs/tiny
"""
from ssmax_jax.train import default_config


def get_config():
  c = default_config()
  c.model.update(d_model=192, num_layers=4, num_heads=4, d_ff=512,
                 attention="ssmax", dtype="float32")
  c.data.update(source="shakespeare", tokenizer="byte")
  c.train.update(num_steps=150, batch_size=16, seq_len=256, log_every=10)
  c.optimizer.update(lr=3e-3, warmup_steps=10, schedule="cosine", final_lr_ratio=0.1)
  c.checkpoint.update(every_steps=50, keep=2)
  c.sample.update(prompt="ROMEO.\n", num_tokens=300)
  return c
