"""What the flax `attention_fn` drop-ins share: batch folding, sown weights and dropout.

Flax calls attention_fn with [..., T, N, H] inputs and masks broadcastable to [..., N, T, S];
the op takes [B,T,N,H]. Weights are formed in plain JAX only when flax asks for them (sown) or
dropout needs them; otherwise the op runs on its chosen backend.
"""
import math

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from ssmax_jax import ops


def _fold(name: str, x: ArrayLike | None, batch: tuple) -> jax.Array | None:
  """A mask or bias broadcastable to [..., N, T, S] as [B, N|1, T|1, S|1]."""
  if x is None:
    return None
  x = jnp.asarray(x)
  tail = x.shape[-3:] if x.ndim >= 3 else (1,) * (3 - x.ndim) + x.shape
  try:
    x = jnp.broadcast_to(x, batch + tail)
  except ValueError:
    raise ValueError(f"{name} has shape {x.shape}; it must broadcast to [..., N, T, S] with "
                     f"the batch dims {batch} of query.") from None
  return x.reshape((math.prod(batch),) + tail)


def _check_dropout(dropout_rate, dropout_rng, implementation):
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"dropout_rate={dropout_rate!r}; it must be in [0, 1).")
  if dropout_rng is None:
    raise ValueError("dropout_rng is required when dropout_rate > 0 and deterministic=False: "
                     "give the attention module a dropout rng stream.")
  if implementation not in (None, "auto", "xla"):
    raise ValueError(f"dropout_rate={dropout_rate} needs the attention weights, which only the "
                     f"XLA path forms, but implementation={implementation!r}: use "
                     "implementation='xla' or None, or set dropout_rate=0 (or "
                     "deterministic=True).")


def attention_weights(q_BTNH: jax.Array, k_BSKH: jax.Array, bias: jax.Array | None,
                      mask: jax.Array | None, c_kwargs: dict, *, is_causal: bool) -> jax.Array:
  """The probabilities [B,N,T,S] of the length-scaled logits, float32; rows with no key are 0."""
  B, T, N, H = q_BTNH.shape
  S, K = k_BSKH.shape[1], k_BSKH.shape[2]
  if "s" in c_kwargs:
    n = ops.attention_counts(q_BTNH, k_BSKH, mask, is_causal=is_causal)
    variant = "ssmax_bias" if "b" in c_kwargs else "ssmax"
    c_BTN = ops.logit_multiplier(variant, n, num_heads=N, **c_kwargs)
  else:
    c_BTN = c_kwargs.get("logit_multiplier", jnp.ones((B, T, N), jnp.float32))
  k_BSNH = jnp.repeat(k_BSKH, N // K, axis=2)  # query head h reads kv head h // (N // K)
  logits_BNTS = jnp.einsum("btnh,bsnh->bnts", q_BTNH, k_BSNH,
                           preferred_element_type=jnp.float32)
  logits_BNTS = logits_BNTS * (jnp.transpose(c_BTN, (0, 2, 1))[..., None] / math.sqrt(H))
  if bias is not None:
    logits_BNTS = logits_BNTS + bias.astype(jnp.float32)
  keep = jnp.ones((1, 1, T, S), bool) if mask is None else mask
  if is_causal:
    keep = keep & (jnp.arange(S)[None, :] <= jnp.arange(T)[:, None])
  keep = jnp.broadcast_to(keep, logits_BNTS.shape)
  logits_BNTS = jnp.where(keep, logits_BNTS, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(logits_BNTS, axis=-1) * keep  # exact 0 off the mask and in empty rows


def flax_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                   bias: ArrayLike | None, mask: ArrayLike | None, *,
                   c_kwargs_fn: Callable[..., dict], is_causal: bool, dropout_rate: float,
                   deterministic: bool, dropout_rng: jax.Array | None, broadcast_dropout: bool,
                   dtype, sow: Callable[[jax.Array], None] | None,
                   implementation: str | None, fp32_weights: bool = False) -> jax.Array:
  """Attention with flax's attention_fn contract, c from c_kwargs_fn(q_BTNH, k_BSKH, mask).

  fp32_weights keeps the sown (and dropped-out) weights in float32, as linen's
  force_fp32_for_softmax; otherwise they are in query's dtype.
  """
  if dtype is not None:
    query, key, value = (jnp.asarray(x).astype(dtype) for x in (query, key, value))
  dropout = bool(dropout_rate) and not deterministic
  if dropout:
    _check_dropout(dropout_rate, dropout_rng, implementation)
  for name, x in (("query", query), ("key", key), ("value", value)):
    if jnp.ndim(x) < 3:
      raise ValueError(f"{name} has shape {jnp.shape(x)}; expected [..., length, heads, dim].")
  batch = query.shape[:-3]
  if key.shape[:-3] != batch or value.shape[:-3] != batch:
    raise ValueError(f"query, key and value batch dims {batch}, {key.shape[:-3]}, "
                     f"{value.shape[:-3]} must match.")
  B = math.prod(batch)
  q_BTNH, k_BSKH, v_BSKH = (x.reshape((B,) + x.shape[-3:]) for x in (query, key, value))
  if mask is not None:  # flax builds 0/1 float masks; the op takes booleans
    mask = jnp.asarray(mask).astype(bool)
  mask, bias = _fold("mask", mask, batch), _fold("bias", bias, batch)
  c_kwargs = c_kwargs_fn(q_BTNH, k_BSKH, mask)
  if sow is not None or dropout:
    w_BNTS = attention_weights(q_BTNH, k_BSKH, bias, mask, c_kwargs, is_causal=is_causal)
    N, T, S = w_BNTS.shape[1:]
    w_dtype = jnp.float32 if fp32_weights else query.dtype
    w = w_BNTS.astype(w_dtype).reshape(batch + (N, T, S))
    if sow is not None:
      sow(w)  # before dropout, as flax sows them
  if not dropout:  # sown weights are a debugging aid: the output still comes from the op
    out_BTNH = ops.dot_product_attention(q_BTNH, k_BSKH, v_BSKH, bias, mask,
                                         is_causal=is_causal, implementation=implementation,
                                         **c_kwargs)
    return out_BTNH.reshape(query.shape[:-1] + value.shape[-1:])
  keep_prob = 1.0 - dropout_rate
  # broadcast_dropout: one keep pattern [T,S] for every batch entry and head.
  keep_shape = (1,) * (len(batch) + 1) + (T, S) if broadcast_dropout else w.shape
  keep = jax.random.bernoulli(dropout_rng, keep_prob, keep_shape)
  w = w * (keep.astype(w.dtype) / jnp.asarray(keep_prob, w.dtype))
  K = value.shape[-2]
  w_BKGTS = w.reshape(B, K, N // K, T, S)
  out_BTKGH = jnp.einsum("bkgts,bskh->btkgh", w_BKGTS, v_BSKH.astype(w.dtype))
  return out_BTKGH.reshape(query.shape[:-1] + value.shape[-1:]).astype(query.dtype)
