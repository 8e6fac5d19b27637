"""Small NNX layers with logical axis names on every parameter."""
import jax
import jax.numpy as jnp
from flax import nnx


def param(rngs, init, shape, names, dtype):
  """An nnx.Param with logical axis names (sharded later by the trainer, not eagerly)."""
  return nnx.Param(init(rngs.params(), shape, dtype), out_sharding=names, eager_sharding=False)


class Dense(nnx.Module):
  """y = x @ W, no bias; W [in, out] is stored in param_dtype and applied in dtype."""

  def __init__(self, d_in, d_out, names, *, dtype, param_dtype, rngs, init=None):
    init = init or nnx.initializers.normal(stddev=d_in ** -0.5)
    self.kernel = param(rngs, init, (d_in, d_out), names, param_dtype)
    self.dtype = dtype

  def __call__(self, x):
    return jnp.einsum("...i,io->...o", x.astype(self.dtype), self.kernel[...].astype(self.dtype))


class RMSNorm(nnx.Module):
  def __init__(self, dim, *, eps=1e-6, dtype, param_dtype, rngs):
    self.scale = param(rngs, nnx.initializers.ones, (dim,), ("norm",), param_dtype)
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (x32 * self.scale[...].astype(jnp.float32)).astype(self.dtype)


def rope(x_BTNH, positions_BT, theta):
  """Rotary embedding (rotate-half pairing) at the given positions; theta may be traced."""
  H = x_BTNH.shape[-1]
  inv_freq = 1.0 / (jnp.asarray(theta, jnp.float32) ** (jnp.arange(0, H, 2, dtype=jnp.float32) / H))
  angle_BTF = positions_BT.astype(jnp.float32)[:, :, None] * inv_freq
  cos = jnp.cos(angle_BTF)[:, :, None, :]
  sin = jnp.sin(angle_BTF)[:, :, None, :]
  x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BTNH.dtype)
