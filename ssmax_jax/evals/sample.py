"""Text from a model: prompts in, continuations out (what a sampling command calls).

  sample(model, tokenizer, prompts, max_new_tokens, ...)           a model already loaded
  sample_from_checkpoint(workdir, prompts, max_new_tokens, ...)    a training workdir

Prompts of different lengths decode in one batch (`ssmax_jax.models.generate` with
prompt_lengths); each row stops at the tokenizer's end-of-text token.
"""
from collections.abc import Sequence

import numpy as np

from ssmax_jax import data
from ssmax_jax.evals import common
from ssmax_jax.models import Transformer, generate


def _check_prompts(prompts, max_new_tokens):
  if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
    raise ValueError("prompts must be a list of str (one per sample), e.g. ['Once upon'].")
  if not prompts:
    raise ValueError("prompts is empty: pass at least one prompt ('' starts a new document).")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1.")


def _right_pad(ids_list):
  """([B,T] int32 right-padded with 0, lengths [B] int32) of token id arrays."""
  lengths_B = np.array([len(ids) for ids in ids_list], np.int32)
  prompts_BT = np.zeros((len(ids_list), lengths_B.max()), np.int32)
  for row, ids in zip(prompts_BT, ids_list):
    row[:len(ids)] = ids
  return prompts_BT, lengths_B


def sample(model: Transformer, tokenizer: data.Tokenizer, prompts: Sequence[str],
           max_new_tokens: int, *, temperature: float = 0.0, top_k: int | None = None,
           top_p: float | None = None, stop_at_eot: bool = True, seed: int = 0,
           rope_theta: float | None = None) -> list[str]:
  """Continues each prompt with `model`, all prompts in one batch.

  Args:
    model: the model to decode with.
    tokenizer: the tokenizer the model was trained with (`ssmax_jax.data.get_tokenizer`).
    prompts: the texts to continue; '' starts from the end-of-text token (a new document,
      as documents end with it in training).
    max_new_tokens: the most tokens to generate per prompt, >= 1.
    temperature: 0 is greedy decoding; see `ssmax_jax.models.generate`.
    top_k: sample from the top_k most likely tokens (needs temperature > 0).
    top_p: nucleus sampling threshold in (0, 1] (needs temperature > 0).
    stop_at_eot: stop each prompt at the tokenizer's end-of-text token, which is left out of
      the text; False generates max_new_tokens tokens each.
    seed: the sampling seed.
    rope_theta: RoPE's base while decoding; None is the model's.

  Returns:
    The continuation of each prompt (without the prompt), in the order of `prompts`.

  Raises:
    ValueError: for bad prompts or decoding arguments, before decoding.
  """
  _check_prompts(prompts, max_new_tokens)
  eot = tokenizer.eot_id
  prompts_BT, lengths_B = _right_pad([tokenizer.encode(p) if p else np.array([eot])
                                      for p in prompts])
  tokens_BL, new_lengths_B = generate(
      model, prompts_BT, max_new_tokens, prompt_lengths=lengths_B, temperature=temperature,
      top_k=top_k, top_p=top_p, eos_id=eot if stop_at_eot else None, seed=seed,
      rope_theta=rope_theta, return_lengths=True)
  new_BA = np.asarray(tokens_BL)[:, prompts_BT.shape[1]:]
  texts = []
  for row, n in zip(new_BA, np.asarray(new_lengths_B)):
    ids = row[:n]
    if stop_at_eot and n and ids[-1] == eot:
      ids = ids[:-1]
    texts.append(tokenizer.decode(ids))
  return texts


def sample_from_checkpoint(workdir: str, prompts: Sequence[str], max_new_tokens: int, *,
                           step: int | None = None, variant: str | None = None,
                           implementation: str | None = "default", **sample_kwargs) -> list[str]:
  """Loads a training run's checkpoint and tokenizer, and continues each prompt (`sample`).

  Args:
    workdir: a training workdir (the --workdir of experiments.train).
    prompts: the texts to continue, as in `sample`.
    max_new_tokens: the most tokens to generate per prompt, >= 1.
    step: the checkpoint step; None is the latest.
    variant: switch the attention variant after loading (e.g. 'qwen_logn' on a softmax run);
      None keeps the run's.
    implementation: the attention backend; 'default' is
      `ssmax_jax.evals.common.default_implementation` for the run's dtype.
    **sample_kwargs: temperature, top_k, top_p, stop_at_eot, seed, rope_theta (see `sample`).

  Returns:
    The continuation of each prompt (without the prompt), in the order of `prompts`.

  Raises:
    ValueError: if workdir is not a training workdir, the step does not restore, or an
      argument is bad (prompts before loading, the decoding arguments before decoding).
  """
  _check_prompts(prompts, max_new_tokens)
  spec = common.ModelSpec(workdir, step, variant)
  model, config = common.load(spec, implementation)
  tokenizer = data.get_tokenizer(config.data.tokenizer)
  return sample(model, tokenizer, prompts, max_new_tokens, **sample_kwargs)
