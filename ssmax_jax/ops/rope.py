"""RoPE's transpose on the q and k gradients, written stacked: the op (backend choice, sharding).

The fused q/k projection's backward (ssmax_jax.nn.attention.project_rotate_qk) rotates both
gradients back and stacks them for its two gradient GEMMs. 'pallas' runs
ssmax_jax/kernels/rope_gpu.py on each device's rows and heads; 'xla' is the same math in jnp;
'auto' takes the kernel on a GPU where the head dimension is whole on each device and the
device's rows split into the kernel's blocks, and XLA elsewhere (decided at trace time).
"""
import functools

import jax
from jax.sharding import PartitionSpec as P

from ssmax_jax.kernels import rope_gpu
from ssmax_jax.ops.norm import local_rows

IMPLEMENTATIONS = ("auto", "xla", "pallas")


def rotate_back_stacked(g_q_BTNH, g_k_BTNH, cos_BTF, sin_BTF, *, spec=None,
                        implementation="auto"):
  """[B,T,2,N,H]: RoPE by the opposite angles applied to g_q (slab 0) and g_k (slab 1), in
  their dtype (ssmax_jax/kernels/rope_gpu.py, the contract). cos, sin [B,T,H/2] float32.
  spec: the gradients' PartitionSpec under the mesh in use (None: no mesh)."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"rope implementation={implementation!r} is unknown; choose one of "
                     f"{', '.join(map(repr, IMPLEMENTATIONS))}.")
  H = g_q_BTNH.shape[-1]
  rope_gpu.check_inputs(g_q_BTNH, g_k_BTNH, cos_BTF, sin_BTF)
  if g_q_BTNH.ndim != 4:
    raise ValueError(f"g_q has shape {g_q_BTNH.shape}: pass [B, T, N, H] gradients.")
  # Rows are (b, t) and heads may be split too, the head dimension may not: count [B, T, H].
  b, t, n, h = tuple(spec or ()) + (None,) * (4 - len(spec or ()))
  rows, whole = local_rows((*g_q_BTNH.shape[:2], H), None if spec is None else P(b, t, h))
  fits = whole and rope_gpu.supported(rows, H)
  if implementation == "pallas" and not fits:
    raise ValueError(f"rope implementation 'pallas' needs the head dimension whole on each "
                     f"device, a power of two for half of it, and a multiple of "
                     f"{rope_gpu.BLOCK_ROWS} rows per device (here {rows} rows, H={H}): change "
                     "the batch or mesh, or use 'xla' or 'auto'.")
  if implementation == "xla" or (implementation == "auto" and not (
      fits and jax.default_backend() == "gpu")):
    return rope_gpu.reference_rotate_back_stacked(g_q_BTNH, g_k_BTNH, cos_BTF, sin_BTF)
  kernel = functools.partial(rope_gpu.rotate_back_stacked,
                             interpret=jax.default_backend() == "cpu")
  if spec is None or all(a is None for a in spec):
    return kernel(g_q_BTNH, g_k_BTNH, cos_BTF, sin_BTF)
  # shard_map keeps XLA from gathering the rows for the custom call; every row and head is
  # independent, so each device rotates its own.
  return jax.shard_map(kernel, mesh=jax.sharding.get_abstract_mesh(),
                       in_specs=(spec, spec, P(b, t, None), P(b, t, None)),
                       out_specs=P(b, t, None, n, None), check_vma=False)(
                           g_q_BTNH, g_k_BTNH, cos_BTF, sin_BTF)
