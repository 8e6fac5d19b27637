"""RoPE's transpose applied to the q and k gradients, written stacked (Pallas Triton lowering;
interpret mode elsewhere).

The fused q/k projection (ssmax_jax.nn.attention.project_rotate_qk) needs, in its backward, the
gradients of q and k rotated back by RoPE and stacked as one [M, 2, N, H] array, which feeds
both of its gradient GEMMs. XLA emits that as a concatenate kernel that ran at ~1.6 TB/s on the
H200 (1.47 ms per step of the paper model for 2.4 GB), against ~3.5 TB/s for the forward
rotation moving the same bytes (docs/performance.md, ninth measurement). Here one program owns
`block_rows` rows: it loads their cos and sin once and rotates every head of both gradients
into its block of the stacked output. Counted per call: reads 2 and writes 2 arrays of [M, N*H]
(the cos and sin [M, H/2] float32 add a quarter of one bf16 array each).

Contract: g_q, g_k [..., N, H] of one float dtype (M rows: the product of the leading dims),
H/2 a power of two for the kernel; cos, sin [..., H/2] float32 (the angles of each row's
position). Returns d [..., 2, N, H] in g's dtype with, for x = g_q (d[..., 0, :, :]) and
x = g_k (d[..., 1, :, :]) and halves x1 = x[..., :H/2], x2 = x[..., H/2:]:
    d[..., :H/2] = x1 * cos + x2 * sin,   d[..., H/2:] = x2 * cos - x1 * sin
(the rotate-half RoPE by the opposite angles), computed in float32 and rounded once.
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

_F32 = jnp.float32

BLOCK_ROWS = 16
NUM_WARPS = 4


def supported(num_rows: int, head_dim: int, block_rows: int = BLOCK_ROWS) -> bool:
  """Rows split into whole blocks and half a head is a power of two (a Triton tile)."""
  half = head_dim // 2
  return num_rows % block_rows == 0 and head_dim % 2 == 0 and half & (half - 1) == 0


def check_inputs(g_q, g_k, cos, sin):
  """ValueError for what a caller can get wrong; returns (M, N, H)."""
  if g_q.shape != g_k.shape or g_q.dtype != g_k.dtype or g_q.ndim < 3:
    raise ValueError(f"g_q {g_q.shape} {g_q.dtype} and g_k {g_k.shape} {g_k.dtype} must both be "
                     "[..., N, H] of one dtype (no GQA: N query heads, N key heads).")
  *lead, N, H = g_q.shape
  want = (*lead, H // 2)
  if H % 2 or cos.shape != want or sin.shape != want:
    raise ValueError(f"cos {cos.shape} and sin {sin.shape} must be [..., H/2] = {want}, one "
                     f"angle per row and frequency, with an even H (here {H}).")
  return math.prod(lead), N, H


def reference_rotate_back_stacked(g_q, g_k, cos, sin):
  """The contract in jnp (XLA; differentiable), written as ssmax_jax.nn.layers.rope writes the
  rotation: x * cos + swap_halves(x) * (sin, -sin), elementwise for XLA's fusion."""
  check_inputs(g_q, g_k, cos, sin)
  c, s = (a[..., None, None, :] for a in (cos, sin))  # [..., 1, 1, H/2] against [..., N, 2, H/2]
  sign_21 = jnp.array([[1.0], [-1.0]], _F32)

  def rotate_back(x):
    x_N2F = x.astype(_F32).reshape(*x.shape[:-1], 2, -1)
    out = x_N2F * c + jnp.flip(x_N2F, axis=-2) * (sign_21 * s)
    return out.reshape(x.shape).astype(x.dtype)

  return jnp.stack([rotate_back(g_q), rotate_back(g_k)], axis=-3)


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
  """d [..., 2, N, H] of the contract; block_rows rows per program, dividing the rows."""
  M, N, H = check_inputs(g_q, g_k, cos, sin)
  if not supported(M, H, block_rows):
    raise ValueError(f"{M} rows in blocks of block_rows={block_rows} with head_dim={H}: pick a "
                     "block_rows dividing the rows and an H whose half is a power of two, or use"
                     " reference_rotate_back_stacked (call supported() first).")
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
