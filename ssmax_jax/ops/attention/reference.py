"""The 'xla' backend: plain JAX that materialises the [B,N,T,S] logits. It takes every call
(dense masks and bias included) and is the reference every kernel is held to."""
import jax
import jax.numpy as jnp

from ssmax_jax.ops.attention import masks


def unsupported_reason(*, query, key, spec, bias, default_positions, platform):
  """None: this backend takes every call the op validates."""
  del query, key, spec, bias, default_positions, platform
  return None


def attention_xla(q_BTNH, k_BSKH, v_BSKH, c_BTN, spec: masks.MaskSpec, *, scale, bias=None):
  """Softmax of c * scale * q.k (+ bias) over the allowed keys; zeros where none is allowed."""
  B, T, N, H = q_BTNH.shape
  K = k_BSKH.shape[2]
  G = N // K
  # Full float32 precision: the default on GPU would be TF32 and miss the 1e-5 contract.
  precision = jax.lax.Precision.HIGHEST
  q_BTKGH = q_BTNH.reshape(B, T, K, G, H)
  logits_BKGTS = jnp.einsum("btkgh,bskh->bkgts", q_BTKGH, k_BSKH, precision=precision,
                            preferred_element_type=jnp.float32)
  logits_BNTS = logits_BKGTS.reshape(B, N, T, -1) * scale
  if c_BTN is not None:
    logits_BNTS = logits_BNTS * jnp.transpose(c_BTN, (0, 2, 1))[..., None]
  if bias is not None:
    logits_BNTS = logits_BNTS + jnp.asarray(bias, jnp.float32)
  allowed_BNTS = masks.full_allowed_BNTS(spec)
  # A finite fill keeps gradients free of inf - inf; the where() below zeroes masked terms.
  logits_BNTS = jnp.where(allowed_BNTS, logits_BNTS, jnp.finfo(jnp.float32).min)
  row_max_BNT1 = jax.lax.stop_gradient(logits_BNTS.max(-1, keepdims=True))
  unnorm_BNTS = jnp.where(allowed_BNTS, jnp.exp(logits_BNTS - row_max_BNT1), 0.0)
  denom_BNT1 = unnorm_BNTS.sum(-1, keepdims=True)
  probs_BNTS = unnorm_BNTS / jnp.where(denom_BNT1 > 0, denom_BNT1, 1.0)
  probs_BKGTS = probs_BNTS.reshape(B, K, G, T, -1)
  out_BTKGH = jnp.einsum("bkgts,bskh->btkgh", probs_BKGTS, v_BSKH.astype(jnp.float32),
                         precision=precision)
  return out_BTKGH.reshape(B, T, N, H).astype(q_BTNH.dtype)
