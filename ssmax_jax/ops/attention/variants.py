"""Attention variants as functions of n, the number of keys a query attends.

Every variant multiplies the logits of query i by c_i (docs/variants.md has the sources):

  softmax             c = 1
  ssmax               c = s_h * log(n)                  s learned per layer and head
  ssmax_bias          c = s_h * log(n) + b_h            paper variant (d)
  ssmax_fixed         c = s * log(n)                    s a constant (default 1), variant (c)
  qwen_logn           c = max(1, log(n) / log(L_train))
  llama4_temperature  c = log(floor(n / floor_scale) + 1) * attn_scale + 1
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

VARIANTS = ("softmax", "ssmax", "ssmax_bias", "ssmax_fixed", "qwen_logn", "llama4_temperature")
"""Every variant name `logit_multiplier` and the modules' `variant=` take (docs/variants.md)."""
LEARNED_VARIANTS = ("ssmax", "ssmax_bias")
"""The variants whose multiplier has parameters trained with the model (s, and b)."""


def check_variant(variant: str) -> None:
  if variant not in VARIANTS:
    raise ValueError(f"variant={variant!r} is unknown; choose one of {', '.join(VARIANTS)}.")


def default_s_init(l_train: int) -> float:
  """The default initial s: 1 / mean(log n for n = 1..l_train).

  With it, c = s*log(n) averages 1 over the training length, so SSMax starts close to softmax.

  Args:
    l_train: the training length, >= 2.

  Returns:
    s as a Python float (about 0.168 for l_train=1024).
  """
  if int(l_train) < 2:
    raise ValueError(f"l_train={l_train} must be >= 2 for a default s (log 1 = 0).")
  return float(1.0 / np.mean(np.log(np.arange(1, int(l_train) + 1, dtype=np.float64))))


def _per_head(name, x, num_heads):
  x = jnp.asarray(x, jnp.float32)
  if x.ndim == 0:
    return x
  if x.ndim != 1 or (num_heads is not None and x.shape[0] != num_heads):
    want = f"[{num_heads}]" if num_heads is not None else "[N]"
    raise ValueError(f"{name} has shape {x.shape}; pass a scalar or an array of shape {want}"
                     " (one value per query head).")
  return x


def logit_multiplier(variant: str, n: ArrayLike, *, s: ArrayLike | None = None,
                     b: ArrayLike | None = None, l_train: int | None = None,
                     floor_scale: float = 8192.0, attn_scale: float = 0.1,
                     num_heads: int | None = None) -> jax.Array:
  """The multiplier c of `variant` for the given attended-key counts n.

  Pass the result as `dot_product_attention(..., logit_multiplier=c)`. The formulas are in
  this module's docstring and docs/variants.md.

  Args:
    variant: a name in `VARIANTS`.
    n: int [B,T] (or [B,T,N]) counts of attended keys, e.g. from `attention_counts`; n < 1
      is clamped to 1.
    s: a scalar or [N]: needed by ssmax and ssmax_bias; ssmax_fixed's constant (default 1).
    b: a scalar or [N]: ssmax_bias only.
    l_train: the training length, >= 2: qwen_logn only.
    floor_scale: llama4_temperature's floor scale.
    attn_scale: llama4_temperature's attention scale.
    num_heads: N, to broadcast c to [B,T,N] when neither s nor n carries it.

  Returns:
    float32 [B,T,N] (or [B,T,1] if N cannot be known).

  Raises:
    ValueError: for an unknown variant or a missing or unused argument.
  """
  check_variant(variant)
  n = jnp.asarray(n)
  if n.ndim not in (2, 3):
    raise ValueError(f"n has shape {n.shape}; expected [B,T] or [B,T,N] counts.")
  if variant in ("ssmax", "ssmax_bias") and s is None:
    raise ValueError(f"variant={variant!r} needs s (a scalar or one value per head).")
  if variant == "ssmax_bias" and b is None:
    raise ValueError("variant='ssmax_bias' needs b (a scalar or one value per head).")
  if variant != "ssmax_bias" and b is not None:
    raise ValueError(f"b is only used by variant='ssmax_bias', not {variant!r}; drop b.")
  if variant == "qwen_logn" and (l_train is None or l_train < 2):
    raise ValueError(f"variant='qwen_logn' needs l_train >= 2 (the training length), got {l_train}.")
  n_BTN = n if n.ndim == 3 else n[:, :, None]
  log_n = jnp.log(jnp.maximum(n_BTN, 1).astype(jnp.float32))
  if variant == "softmax":
    c = jnp.ones_like(log_n)
  elif variant in ("ssmax", "ssmax_bias", "ssmax_fixed"):
    s = 1.0 if s is None else s
    c = _per_head("s", s, num_heads) * log_n
    if variant == "ssmax_bias":
      c = c + _per_head("b", b, num_heads)
  elif variant == "qwen_logn":
    c = jnp.maximum(1.0, log_n / math.log(l_train))
  else:  # llama4_temperature
    c = jnp.log(jnp.floor(jnp.maximum(n_BTN, 1) / floor_scale) + 1.0) * attn_scale + 1.0
  if num_heads is not None and c.shape[-1] == 1:
    c = jnp.broadcast_to(c, c.shape[:2] + (num_heads,))
  return c.astype(jnp.float32)
