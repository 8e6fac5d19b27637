"""Small NNX layers with logical axis names on every parameter."""
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike, DTypeLike

from ssmax_jax import ops
from ssmax_jax.nn._signature import init_signature
from ssmax_jax.nn.partitioning import activation_spec


def param(rngs, init, shape, names, dtype):
  """An nnx.Param with logical axis names (sharded later by the trainer, not eagerly)."""
  return nnx.Param(init(rngs.params(), shape, dtype), out_sharding=names, eager_sharding=False)


@init_signature
class Dense(nnx.Module):
  """y = x @ W, no bias; W [in, out] (`kernel`) is stored in param_dtype and applied in dtype."""

  def __init__(self, d_in: int, d_out: int, names: tuple[str | None, str | None], *,
               dtype: DTypeLike, param_dtype: DTypeLike, rngs: nnx.Rngs,
               init: Callable | None = None):
    """Creates the weight.

    Args:
      d_in: the input width.
      d_out: the output width.
      names: the weight's two logical axis names (`ssmax_jax.nn.RULES`), e.g. ('embed', 'mlp').
      dtype: the compute dtype: x and W are cast to it.
      param_dtype: the dtype W is stored in.
      rngs: the random streams; W draws from `rngs.params()`.
      init: a flax initializer `init(key, shape, dtype)`; None is normal(stddev=d_in**-0.5).
    """
    init = init or nnx.initializers.normal(stddev=d_in ** -0.5)
    self.kernel = param(rngs, init, (d_in, d_out), names, param_dtype)
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    """[..., d_in] -> [..., d_out] in dtype."""
    return jnp.einsum("...i,io->...o", x.astype(self.dtype), self.kernel[...].astype(self.dtype))


@init_signature
class RMSNorm(nnx.Module):
  """x * rsqrt(mean(x^2) + eps) * scale, computed in float32 and returned in dtype.

  `add_norm` adds a branch output to the residual stream first, in the same op (one kernel each
  way on a GPU: ssmax_jax/ops/rms_norm, whose `implementation` this takes).
  """

  def __init__(self, dim: int, *, eps: float = 1e-6, dtype: DTypeLike,
               param_dtype: DTypeLike, rngs: nnx.Rngs, implementation: str | None = None):
    """Creates the scale (ones).

    Args:
      dim: D, the normalised (last) axis' size.
      eps: added to mean(x^2).
      dtype: the output dtype.
      param_dtype: the dtype the scale is stored in.
      rngs: the random streams (the scale's initializer takes a key).
      implementation: None (or 'auto'), 'xla' or 'pallas' (ssmax_jax/ops/rms_norm).

    Raises:
      ValueError: for an unknown implementation.
    """
    ops.check_norm_implementation(implementation)
    self.scale = param(rngs, nnx.initializers.ones, (dim,), ("norm",), param_dtype)
    self.eps = eps
    self.dtype = dtype
    self.implementation = implementation

  def __call__(self, x_BTD: jax.Array) -> jax.Array:
    """[B,T,D] (any leading axes) -> the norm of x, same shape, in dtype."""
    return self.add_norm(x_BTD, None)[1]

  def add_norm(self, x_BTD: jax.Array,
               delta_BTD: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """The residual add and the norm in one op.

    Args:
      x_BTD: [B,T,D] (any leading axes), the residual stream.
      delta_BTD: a branch output to add to x, x's shape; None adds nothing.

    Returns:
      (x + delta, the norm of x + delta in dtype); with delta None, (x, the norm of x).
    """
    names = ("act_batch",) + (None,) * (x_BTD.ndim - 2) + ("act_embed",)
    return ops.add_rms_norm(x_BTD, delta_BTD, self.scale[...], eps=self.eps,
                            out_dtype=self.dtype, implementation=self.implementation,
                            spec=activation_spec(x_BTD.shape, names))


def rope_cos_sin(positions_BT, theta, head_dim):
  """(cos, sin) [B,T,H/2] float32 of RoPE's angles at the given positions; theta may be traced."""
  inv_freq = 1.0 / (jnp.asarray(theta, jnp.float32)
                    ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angle_BTP = positions_BT.astype(jnp.float32)[:, :, None] * inv_freq
  return jnp.cos(angle_BTP), jnp.sin(angle_BTP)


def rope(x_BTNH: jax.Array, positions_BT: jax.Array, theta: ArrayLike,
         inverse: bool = False) -> jax.Array:
  """Rotary embedding (rotate-half pairing) at the given positions.

  Written as x * cos + swap_halves(x) * (-sin, sin), without a concatenate: every op is then
  elementwise (reversing an axis of 2 is an index map), so XLA fuses the rotation into the
  kernels around it (the SSMax multiplier forward, the s gradient's reduction backward) instead
  of writing the rotated halves out (benchmarks/compile_offline.py counts the traffic).

  Args:
    x_BTNH: [B,T,N,H] queries or keys, H even.
    positions_BT: [B,T] int positions.
    theta: RoPE's base (may be traced).
    inverse: rotate by the opposite angles (the transpose, for a backward pass).

  Returns:
    [B,T,N,H] in x's dtype (computed in float32).
  """
  H = x_BTNH.shape[-1]
  cos_BTP, sin_BTP = rope_cos_sin(positions_BT, theta, H)
  cos_BT11P, sin_BT11P = cos_BTP[:, :, None, None, :], sin_BTP[:, :, None, None, :]
  x_BTN2P = x_BTNH.astype(jnp.float32).reshape(*x_BTNH.shape[:-1], 2, H // 2)
  # first half x1 cos - x2 sin, second half x2 cos + x1 sin
  sign_21 = jnp.array([[1.0], [-1.0]] if inverse else [[-1.0], [1.0]], jnp.float32)
  out = x_BTN2P * cos_BT11P + jnp.flip(x_BTN2P, axis=-2) * (sign_21 * sin_BT11P)
  return out.reshape(x_BTNH.shape).astype(x_BTNH.dtype)
