"""Long-context evaluations (paper Fig. 5, section 3.3, Fig. 7/8) and the learned s.

  loss_by_position.loss_by_position(model, tokens, length, ...)   test loss per position
  needle.needle_grid(model, tokenizer, tokens, lengths, depths, ...)  exact-match grid
  attention.needle_attention(model, tokenizer, tokens, length, ...)   weight on the needle
  learned_s.head_scalars(model)                                    s (and b) per layer, head
  sample.sample_from_checkpoint(workdir, prompts, max_new_tokens)  continuations of prompts
  report.gather(dirs), report.render(docs, out_path)               one markdown page

Command lines: experiments/eval_*.py and experiments/report.py (docs/evaluations.md). The paper's
reproduction, built on these, is ssmax_jax.reproduce.
"""
from ssmax_jax.evals import (attention, common, learned_s, loss_by_position, needle, report,
                             runner, sample)
