"""The 'xla' backend: the op's contract in jnp (differentiable), written as
ssmax_jax.nn.layers.rope writes the rotation so that XLA fuses it the same way."""
import jax.numpy as jnp


def unsupported_reason(*, shape, spec, platform):
  """None: this backend takes every call the op validates."""
  del shape, spec, platform
  return None


def reference_rotate_back_stacked(g_q, g_k, cos, sin):
  """d [..., 2, N, H] of the contract: x * cos + swap_halves(x) * (sin, -sin), elementwise."""
  c, s = (a[..., None, None, :] for a in (cos, sin))  # [..., 1, 1, P] against [..., N, 2, P]
  sign_21 = jnp.array([[1.0], [-1.0]], jnp.float32)

  def rotate_back(x):
    x_N2P = x.astype(jnp.float32).reshape(*x.shape[:-1], 2, -1)
    out = x_N2P * c + jnp.flip(x_N2P, axis=-2) * (sign_21 * s)
    return out.reshape(x.shape).astype(x.dtype)

  return jnp.stack([rotate_back(g_q), rotate_back(g_k)], axis=-3)
