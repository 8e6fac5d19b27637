"""Math the block-skipping kernels share (triton.py and mosaic_tpu.py; LOG2E also mosaic_gpu).

Both kernels skip block pairs from the per-block ranges of query positions and segment ids,
and both write their matmuls as the two dot_generals below (float32 accumulation, the
precision each backend picks for its inputs).
"""
import math

from jax import lax
import jax.numpy as jnp

LOG2E = math.log2(math.e)   # kernels that exponentiate in base 2 fold it into the multiplier


def block_ranges(x_BT, block):
  """Per-block min and max of an int [B,T] array (T a multiple of block): two [B,T/block]."""
  B, T = x_BT.shape
  x = x_BT.reshape(B, T // block, block)
  return x.min(-1), x.max(-1)


def dot_nt(a, b, precision):  # a [M,K] . b [N,K]^T -> [M,N] float32
  return lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=precision,
                         preferred_element_type=jnp.float32)


def dot_nn(a, b, precision):  # a [M,K] . b [K,N] -> [M,N] float32
  return lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=precision,
                         preferred_element_type=jnp.float32)


def split_nonfinite(x_RH):
  """(x with its non-finite entries zeroed, [R] float32: 0, or NaN for a row that had one).

  Masked pairs must not see a NaN or inf of a row they do not attend: a zero probability times
  NaN is NaN inside the matmul. The kernels multiply clean rows and add the NaN back only to the
  logits (or logit gradients) of the pairs that do attend the row."""
  finite = jnp.isfinite(x_RH)
  # A sum of flags, not finite.all(): Pallas Triton has no lowering for reduce_and.
  bad_R = jnp.sum(jnp.where(finite, 0.0, 1.0), axis=-1)
  poison = jnp.where(bad_R == 0, 0.0, jnp.nan).astype(jnp.float32)
  return jnp.where(finite, x_RH, jnp.zeros_like(x_RH)), poison
