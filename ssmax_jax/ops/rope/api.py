"""The public op: RoPE's transpose on the q and k gradients, written stacked, with backend
choice, on each device's rows and heads.

`rotate_back_stacked` validates the arrays, asks ops/_dispatch.py for a backend (at trace time,
under the mesh of the computation), and runs it:

- implementation=None (or 'auto'): the first backend of the platform's order that takes the
  call: the kernel on a GPU where the head dimension is whole on each device and the device's
  rows split into its blocks, XLA elsewhere;
- 'xla': the jnp reference; 'pallas': the platform's kernels, or a ValueError with
  the reason they cannot take the call.
"""
import functools

from jax.sharding import PartitionSpec as P

from ssmax_jax.ops import _dispatch, _sharding
from ssmax_jax.ops.rope import reference, triton

IMPLEMENTATIONS = _dispatch.ROW_OP_IMPLEMENTATIONS


def check_inputs(g_q_BTNH, g_k_BTNH, cos_BTP, sin_BTP):
  """ValueError for what a caller can get wrong."""
  g_q, g_k = g_q_BTNH, g_k_BTNH
  if g_q.shape != g_k.shape or g_q.dtype != g_k.dtype or g_q.ndim < 3:
    raise ValueError(f"g_q {g_q.shape} {g_q.dtype} and g_k {g_k.shape} {g_k.dtype} must both be "
                     "[..., N, H] of one dtype (no GQA: N query heads, N key heads).")
  *lead, N, H = g_q.shape
  want = (*lead, H // 2)
  if H % 2 or cos_BTP.shape != want or sin_BTP.shape != want:
    raise ValueError(f"cos {cos_BTP.shape} and sin {sin_BTP.shape} must be [..., H/2] = {want}, "
                     f"one angle per row and frequency, with an even H (here {H}).")
  if g_q.ndim != 4:
    raise ValueError(f"g_q has shape {g_q.shape}: pass [B, T, N, H] gradients.")


def _choose(implementation, shape, spec):
  """The name of the backend ('triton' or 'xla') for gradients of `shape` laid out by `spec`."""
  return _dispatch.choose_triton_or_xla("rope", implementation, reference, triton,
                                        shape=shape, spec=spec)


def rotate_back_stacked(g_q_BTNH, g_k_BTNH, cos_BTP, sin_BTP, *, spec=None,
                        implementation=None):
  """[B,T,2,N,H]: RoPE by the opposite angles applied to g_q (slab 0) and g_k (slab 1), in
  their dtype (the contract: ssmax_jax/ops/rope/__init__.py). cos, sin [B,T,H/2] float32.
  spec: the gradients' PartitionSpec under the mesh in use (None: no mesh). implementation:
  None (or 'auto'), 'xla' or 'pallas' (module doc)."""
  check_inputs(g_q_BTNH, g_k_BTNH, cos_BTP, sin_BTP)
  if _choose(implementation, g_q_BTNH.shape, spec) == "xla":
    return reference.reference_rotate_back_stacked(g_q_BTNH, g_k_BTNH, cos_BTP, sin_BTP)
  args = (g_q_BTNH, g_k_BTNH, cos_BTP, sin_BTP)
  kernel = functools.partial(triton.rotate_back_stacked,
                             interpret=_dispatch.platform() == "cpu")
  if spec is None or all(a is None for a in spec):
    return kernel(*args)
  # Every row and head is independent, so each device rotates its own.
  b, t, n, _ = tuple(spec) + (None,) * (4 - len(spec))
  return _sharding.on_each_device(kernel, (spec, spec, P(b, t, None), P(b, t, None)),
                                  P(b, t, None, n, None))(*args)
