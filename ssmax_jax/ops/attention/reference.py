"""The 'xla' backend: plain JAX that materialises the [B,N,T,S] logits. It takes every call
(dense masks and bias included) and is the reference every kernel is held to."""
import jax
import jax.numpy as jnp

from ssmax_jax.ops.attention import masks
from ssmax_jax.ops.attention.kernel_common import split_nonfinite


def unsupported_reason(*, query, key, spec, bias, default_positions, platform):
  """None: this backend takes every call the op validates."""
  del query, key, spec, bias, default_positions, platform
  return None


def attention_xla(q_BTNH, k_BSKH, v_BSKH, c_BTN, spec: masks.MaskSpec, *, scale, bias=None,
                  return_residual=False):
  """Softmax of c * scale * q.k (+ bias) over the allowed keys; zeros where none is allowed.

  return_residual: also return the natural-log log-sum-exp of the final logits, float32
  [B,T,N], -inf for a row that attends no key.

  float64 inputs (x64 enabled) are computed in float64, everything else in float32. A
  non-finite entry of q, k or v reaches only the pairs that attend its row: the matmuls see
  clean rows, and a row's NaN is added back to the logits of the pairs that attend it (0 * NaN
  inside p @ v, or in a gradient's matmul, would otherwise spread it to every query)."""
  B, T, N, H = q_BTNH.shape
  K = k_BSKH.shape[2]
  G = N // K
  dt = jnp.float64 if q_BTNH.dtype == jnp.float64 else jnp.float32
  # Full float32 precision: the default on GPU would be TF32 and miss the 1e-5 contract.
  precision = jax.lax.Precision.HIGHEST
  q_BTNH, q_bad_BTN = split_nonfinite(q_BTNH)
  k_BSKH, k_bad_BSK = split_nonfinite(k_BSKH)
  v_BSKH, v_bad_BSK = split_nonfinite(v_BSKH)
  q_BTKGH = q_BTNH.reshape(B, T, K, G, H)
  logits_BKGTS = jnp.einsum("btkgh,bskh->bkgts", q_BTKGH, k_BSKH, precision=precision,
                            preferred_element_type=dt)
  bad_BKGTS = (jnp.transpose(q_bad_BTN.reshape(B, T, K, G), (0, 2, 3, 1))[..., None]
               + jnp.transpose(k_bad_BSK + v_bad_BSK, (0, 2, 1))[:, :, None, None, :])
  logits_BKGTS = logits_BKGTS + bad_BKGTS.astype(dt)
  logits_BNTS = logits_BKGTS.reshape(B, N, T, -1) * scale
  if c_BTN is not None:
    logits_BNTS = logits_BNTS * jnp.transpose(c_BTN, (0, 2, 1))[..., None].astype(dt)
  if bias is not None:
    logits_BNTS = logits_BNTS + jnp.asarray(bias, dt)
  allowed_BNTS = masks.full_allowed_BNTS(spec)
  # A finite fill keeps gradients free of inf - inf; the where() below zeroes masked terms.
  logits_BNTS = jnp.where(allowed_BNTS, logits_BNTS, jnp.finfo(dt).min)
  row_max_BNT1 = jax.lax.stop_gradient(logits_BNTS.max(-1, keepdims=True))
  unnorm_BNTS = jnp.where(allowed_BNTS, jnp.exp(logits_BNTS - row_max_BNT1), 0.0)
  denom_BNT1 = unnorm_BNTS.sum(-1, keepdims=True)
  probs_BNTS = unnorm_BNTS / jnp.where(denom_BNT1 > 0, denom_BNT1, 1.0)
  probs_BKGTS = probs_BNTS.reshape(B, K, G, T, -1)
  out_BTKGH = jnp.einsum("bkgts,bskh->btkgh", probs_BKGTS, v_BSKH.astype(dt),
                         precision=precision)
  out_BTNH = out_BTKGH.reshape(B, T, N, H).astype(q_BTNH.dtype)
  if not return_residual:
    return out_BTNH
  lse_BNT = jnp.where(denom_BNT1[..., 0] > 0,
                      row_max_BNT1[..., 0] + jnp.log(jnp.where(denom_BNT1[..., 0] > 0,
                                                               denom_BNT1[..., 0], 1.0)),
                      -jnp.inf)
  return out_BTNH, jnp.transpose(lse_BNT, (0, 2, 1)).astype(jnp.float32)
