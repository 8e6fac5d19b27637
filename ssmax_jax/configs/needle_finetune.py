"""Needle-in-a-haystack fine-tuning (paper Table 3): AdamW beta (0.9, 0.999), no weight decay,
clip 1.0, lr 2e-5 with cosine decay, sequence 1,024, batch 128, RoPE theta 10,000. The loss
is on the answer tokens only (per-token loss mask); haystacks are random spans of data.source.

Start from a pretrained run (its parameters; a fresh optimizer):
  python -m experiments.train --config=configs/needle_finetune.py \
      --config.init.workdir=workdirs/paper_ssmax --workdir=workdirs/paper_ssmax_needle
The architecture keys must match that run (configs/paper_162m.py by default). With
model.attention='ssmax' on a softmax run this is the paper's variant (e): s starts at
1 / mean(log n, n = 1..1024).
"""
from ssmax_jax.configs import paper_162m


def get_config():
  c = paper_162m.get_config()
  c.data.update(kind="needle", needle_min_context=256, worker_count=4)
  c.train.update(num_steps=1000, batch_size=128, seq_len=1024, grad_accum_steps=1, log_every=10)
  c.optimizer.update(lr=2e-5, b1=0.9, b2=0.999, weight_decay=0.0, clip_norm=1.0,
                     schedule="cosine", warmup_steps=0, final_lr_ratio=0.0)
  c.checkpoint.update(every_steps=250, keep=2)
  return c
