"""Seconds-scale config for tests: a 2-layer byte-level SSMax model on Shakespeare."""
from ssmax_jax.train import default_config


def get_config():
  c = default_config()
  c.model.update(d_model=32, num_layers=2, num_heads=2, d_ff=64,
                 attention="ssmax", dtype="float32", implementation="xla")
  c.train.update(num_steps=20, batch_size=8, seq_len=32, log_every=5, progress_bar=False)
  c.optimizer.update(lr=3e-3, warmup_steps=2, weight_decay=0.1)
  c.checkpoint.update(every_steps=10, keep=2, async_save=False)
  return c
