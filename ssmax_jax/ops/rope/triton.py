"""The 'triton' backend: RoPE's transpose on the q and k gradients, written stacked (Pallas
Triton lowering; interpret mode on CPU).

XLA emits the stacked gradient as a concatenate kernel that ran at ~1.6 TB/s on the H200 (1.47
ms per step of the paper model for 2.4 GB), against ~3.5 TB/s for the forward rotation moving
the same bytes (benchmarks/bench_rope_kernel.py). Here one program owns `block_rows` rows: it
loads their cos and sin once and rotates every head of both gradients into its block of the
stacked output. Counted per call: reads 2 and writes 2 arrays of [M, N*H] (the cos and sin
[M, H/2] float32 add a quarter of one bf16 array each). The contract is the op's
(ssmax_jax/ops/rope/__init__.py), with H/2 a power of two (a Triton tile).
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
from jax.sharding import PartitionSpec as P

from ssmax_jax.ops import _sharding

_F32 = jnp.float32

BLOCK_ROWS = 16
NUM_WARPS = 4


def supported(num_rows: int, head_dim: int, block_rows: int = BLOCK_ROWS) -> bool:
  """Rows split into whole blocks and half a head is a power of two (a Triton tile)."""
  half = head_dim // 2
  return num_rows % block_rows == 0 and head_dim % 2 == 0 and half & (half - 1) == 0


def unsupported_reason(*, shape, spec, platform):
  """Why the kernel cannot take [B,T,N,H] gradients laid out by `spec` (None when it can)."""
  del platform
  B, T, _, H = shape
  # Rows are (b, t) and heads may be split too, the head dimension may not: count [B, T, H].
  b, t, _, h = tuple(spec or ()) + (None,) * (4 - len(spec or ()))
  rows, whole = _sharding.local_rows((B, T, H), None if spec is None else P(b, t, h))
  if whole and supported(rows, H):
    return None
  return (f"needs the head dimension whole on each device, a power of two for half of it, and "
          f"a multiple of {BLOCK_ROWS} rows per device (here {rows} rows, H={H}): change the "
          "batch or mesh, or use 'xla'")


def _kernel(g_q_ref, g_k_ref, cos_ref, sin_ref, d_ref, *, num_heads, head_dim):
  half = head_dim // 2
  c = cos_ref[...]
  s = sin_ref[...]
  width = num_heads * head_dim
  for slab, g_ref in enumerate((g_q_ref, g_k_ref)):
    for n in range(num_heads):  # unrolled: every offset static
      col = n * head_dim
      x1 = plgpu.load(g_ref.at[:, pl.ds(col, half)]).astype(_F32)
      x2 = plgpu.load(g_ref.at[:, pl.ds(col + half, half)]).astype(_F32)
      out = slab * width + col
      plgpu.store(d_ref.at[:, pl.ds(out, half)], (x1 * c + x2 * s).astype(d_ref.dtype))
      plgpu.store(d_ref.at[:, pl.ds(out + half, half)], (x2 * c - x1 * s).astype(d_ref.dtype))


@functools.partial(jax.jit, static_argnames=("block_rows", "num_warps", "interpret"))
def rotate_back_stacked(g_q, g_k, cos, sin, *, block_rows=BLOCK_ROWS, num_warps=NUM_WARPS,
                        interpret=False):
  """d [..., 2, N, H] of the contract; block_rows rows per program, dividing the rows. The op
  (ssmax_jax/ops/rope/api.py) checks the arrays; this checks the tiles."""
  *lead, N, H = g_q.shape
  M = math.prod(lead)
  if not supported(M, H, block_rows):
    raise ValueError(f"{M} rows in blocks of block_rows={block_rows} with head_dim={H}: pick a "
                     "block_rows dividing the rows and an H whose half is a power of two, or use"
                     " the 'xla' backend (call supported() first).")
  rows = lambda width: pl.BlockSpec((block_rows, width), lambda i: (i, 0))
  d = pl.pallas_call(
      functools.partial(_kernel, num_heads=N, head_dim=H),
      grid=(M // block_rows,),
      in_specs=[rows(N * H), rows(N * H), rows(H // 2), rows(H // 2)],
      out_specs=rows(2 * N * H),
      out_shape=jax.ShapeDtypeStruct((M, 2 * N * H), g_q.dtype),
      compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
      interpret=interpret,
      name="rope_rotate_back_stacked",
  )(g_q.reshape(M, N * H), g_k.reshape(M, N * H), cos.reshape(M, H // 2).astype(_F32),
    sin.reshape(M, H // 2).astype(_F32))
  return d.reshape(*g_q.shape[:-2], 2, N, H)
