"""The 'xla' backend: the op's contract in jnp, differentiated by jax autodiff. It takes every
call the op validates and is the reference the kernel is held to."""
import jax.numpy as jnp
from jax import lax


def unsupported_reason(*, shape, spec, platform):
  """None: this backend takes every call the op validates."""
  del shape, spec, platform
  return None


def reference_add_rms_norm(x, delta, scale_D, *, eps, out_dtype):
  """(sum, y) of the contract (ssmax_jax/ops/rms_norm/__init__.py)."""
  # The add in x's dtype (one correctly rounded sum, as the kernel's float32 add then round):
  # written as the unfused model wrote it, XLA fuses it as it did there.
  s = x if delta is None else x + delta.astype(x.dtype)
  s32 = s.astype(jnp.float32)
  s32 = s32 * lax.rsqrt(jnp.mean(s32 * s32, axis=-1, keepdims=True) + eps)
  return s, (s32 * scale_D.astype(jnp.float32)).astype(out_dtype)
