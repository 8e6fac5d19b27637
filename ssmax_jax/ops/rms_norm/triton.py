"""The 'triton' backend: residual add + RMSNorm in one kernel each way, with its VJP (Pallas
Triton lowering; interpret mode on CPU).

A pre-norm block computes h = x + delta (the residual stream) and then RMSNorm(h). XLA compiles
that into two kernels forward (the add with the sum of squares, then the normalisation) and two
or three backward, moving 5 tensors of [M, D] forward and 6 backward. Here one program owns
`block_rows` rows at full width (a power-of-two tile >= D, its extra columns masked) and does it
in one pass each way. Counted per norm, in tensors of [M, D]: forward reads x and delta and
writes sum and y (4; 2 without delta); backward reads sum, d_y and d_sum and writes d_x (4), plus
rstd [M] float32 both ways and the scale gradient's partial sums [programs, D] float32. At the
paper's M = 32,768 and D = 768 in bf16 one tensor is 50 MB.

The contract is the op's (ssmax_jax/ops/rms_norm/__init__.py), computed on [M, D] rows;
differentiable (jax.custom_vjp) w.r.t. x, delta and scale, with cotangents for both outputs;
the residuals are sum and rstd [M] float32. Math in float32.
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from ssmax_jax.ops import _sharding

_F32 = jnp.float32

# 4 rows x 4 warps forward; backward programs of 4 such blocks: the fastest forward + backward
# of six settings on the H200 at 32,768 x 768 bf16 (benchmarks/bench_norm_kernel.py). Each
# backward program accumulates its rows' scale gradient in registers, so the partial sums are
# [M / 16, D] float32 (6 MB at M = 32,768) rather than one row of them per 4 rows.
BLOCK_ROWS = 4
NUM_WARPS = 4
BWD_ROW_BLOCKS = 4
# Triton's pipelining depth of the backward's loop over its row blocks: deeper settings were
# within 2% of this one, forward + backward (benchmarks/bench_norm_kernel.py).
BWD_NUM_STAGES = 1


def supported(num_rows: int, block_rows: int = BLOCK_ROWS) -> bool:
  """Rows split into whole blocks (the width may have any size: its tile is masked)."""
  return num_rows % block_rows == 0


def unsupported_reason(*, shape, spec, platform):
  """Why the kernel cannot take an x of `shape` [..., D] laid out by `spec` (None when it can):
  it needs whole rows on each device, in whole blocks."""
  del platform
  rows, width_whole = _sharding.local_rows(shape, spec)
  if width_whole and supported(rows):
    return None
  return (f"needs whole rows on each device and a multiple of {BLOCK_ROWS} rows per device "
          f"(here {rows} rows of width {shape[-1]}, "
          f"{'whole' if width_whole else 'split over ' + repr(spec[-1])}): change the batch or "
          "mesh, or use 'xla'")


def _check_blocks(M, block_rows, bwd_row_blocks, bwd_num_stages):
  """ValueError for tile settings the kernel cannot run."""
  if block_rows < 1 or block_rows & (block_rows - 1):
    raise ValueError(f"block_rows={block_rows} is not a power of two (Triton tiles are).")
  if not supported(M, block_rows):
    raise ValueError(f"{M} rows do not split into blocks of block_rows={block_rows}: pick a "
                     "block_rows dividing them, or call supported() first and use "
                     "the 'xla' backend otherwise.")
  if bwd_row_blocks < 1:
    raise ValueError(f"bwd_row_blocks={bwd_row_blocks}: pass a positive count of row blocks.")
  if bwd_num_stages < 1:
    raise ValueError(f"bwd_num_stages={bwd_num_stages}: pass a positive pipelining depth.")


# ----------------------------------------------------------------------------- kernels


def _in_bounds(shape, width):
  """Mask of the real columns of a tile whose last axis is a power of two >= width."""
  return lax.broadcasted_iota(jnp.int32, shape, len(shape) - 1) < width


def _fwd_kernel(*refs, width, eps, has_delta):
  if has_delta:
    x_ref, delta_ref, scale_ref, sum_ref, y_ref, rstd_ref = refs
  else:
    x_ref, scale_ref, y_ref, rstd_ref = refs
  tile = pl.ds(0, pl.next_power_of_2(width))
  in_bounds = _in_bounds((x_ref.shape[0], tile.size), width)
  in_bounds_D = _in_bounds((tile.size,), width)  # its own iota: Triton lowers no slices
  s = plgpu.load(x_ref.at[:, tile], mask=in_bounds, other=0.0)
  if has_delta:
    d = plgpu.load(delta_ref.at[:, tile], mask=in_bounds, other=0.0)
    s = (s.astype(_F32) + d.astype(_F32)).astype(sum_ref.dtype)
    plgpu.store(sum_ref.at[:, tile], s, mask=in_bounds)
  s32 = s.astype(_F32)  # the rounded sum, as the unfused path normalises it
  rstd = lax.rsqrt(jnp.sum(s32 * s32, axis=1) / width + eps)
  scale = plgpu.load(scale_ref.at[tile], mask=in_bounds_D, other=0.0).astype(_F32)
  y = s32 * rstd[:, None] * scale[None, :]
  plgpu.store(y_ref.at[:, tile], y.astype(y_ref.dtype), mask=in_bounds)
  rstd_ref[...] = rstd


def _bwd_kernel(*refs, width, block_rows, row_blocks, has_dsum):
  if has_dsum:
    sum_ref, rstd_ref, dy_ref, scale_ref, dsum_ref, dx_ref, dscale_ref = refs
  else:
    sum_ref, rstd_ref, dy_ref, scale_ref, dx_ref, dscale_ref = refs
  tile = pl.ds(0, pl.next_power_of_2(width))
  in_bounds = _in_bounds((block_rows, tile.size), width)
  in_bounds_D = _in_bounds((tile.size,), width)  # its own iota: Triton lowers no slices
  scale = plgpu.load(scale_ref.at[tile], mask=in_bounds_D, other=0.0).astype(_F32)

  def block(k, dscale):
    rows = pl.ds(k * block_rows, block_rows)
    s = plgpu.load(sum_ref.at[rows, tile], mask=in_bounds, other=0.0).astype(_F32)
    dy = plgpu.load(dy_ref.at[rows, tile], mask=in_bounds, other=0.0).astype(_F32)
    rstd = plgpu.load(rstd_ref.at[rows])
    xhat = s * rstd[:, None]  # padding columns are 0 here and in g: they add nothing below
    g = dy * scale[None, :]
    dx = rstd[:, None] * (g - xhat * (jnp.sum(g * xhat, axis=1) / width)[:, None])
    if has_dsum:
      dx += plgpu.load(dsum_ref.at[rows, tile], mask=in_bounds, other=0.0).astype(_F32)
    plgpu.store(dx_ref.at[rows, tile], dx.astype(dx_ref.dtype), mask=in_bounds)
    return dscale + jnp.sum(dy * xhat, axis=0)

  dscale = lax.fori_loop(0, row_blocks, block, jnp.zeros((tile.size,), _F32))
  plgpu.store(dscale_ref.at[tile], dscale, mask=in_bounds_D)


@dataclasses.dataclass(frozen=True)
class _Config:
  """Static settings of one call (hashable: the custom_vjp's non-differentiable argument)."""
  eps: float
  out_dtype: np.dtype
  block_rows: int
  num_warps: int
  bwd_row_blocks: int
  bwd_num_stages: int
  interpret: bool
  delta_dtype: np.dtype | None  # None: no delta


def _forward(x_MD, delta_MD, scale_D, cfg):
  """(sum [M, D] or None without delta, y [M, D], rstd [M] float32)."""
  M, D = x_MD.shape
  br = cfg.block_rows
  has_delta = delta_MD is not None
  rows_spec = pl.BlockSpec((br, D), lambda i: (i, 0))
  rows_shape = jax.ShapeDtypeStruct((M, D), x_MD.dtype)
  outs = pl.pallas_call(
      functools.partial(_fwd_kernel, width=D, eps=cfg.eps, has_delta=has_delta),
      grid=(M // br,),
      in_specs=[rows_spec] * (1 + has_delta) + [pl.BlockSpec((D,), lambda i: (0,))],
      out_specs=[rows_spec] * (1 + has_delta) + [pl.BlockSpec((br,), lambda i: (i,))],
      out_shape=[rows_shape] * has_delta + [jax.ShapeDtypeStruct((M, D), cfg.out_dtype),
                                            jax.ShapeDtypeStruct((M,), _F32)],
      compiler_params=plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=1),
      interpret=cfg.interpret,
      name="add_rms_norm_fwd" if has_delta else "rms_norm_fwd",
  )(*([x_MD, delta_MD] if has_delta else [x_MD]), scale_D)
  return tuple(outs) if has_delta else (None, *outs)


def _backward(sum_MD, rstd_M, dy_MD, dsum_MD, scale_D, cfg):
  """(d_sum_total [M, D] in sum's dtype, d_scale [D] float32); dsum_MD may be None."""
  M, D = sum_MD.shape
  br = cfg.block_rows
  row_blocks = math.gcd(cfg.bwd_row_blocks, M // br)  # the most that split the rows evenly
  R = br * row_blocks
  programs = M // R
  has_dsum = dsum_MD is not None
  rows_spec = pl.BlockSpec((R, D), lambda i: (i, 0))
  dx, dscale = pl.pallas_call(
      functools.partial(_bwd_kernel, width=D, block_rows=br, row_blocks=row_blocks,
                        has_dsum=has_dsum),
      grid=(programs,),
      in_specs=[rows_spec, pl.BlockSpec((R,), lambda i: (i,)), rows_spec,
                pl.BlockSpec((D,), lambda i: (0,))] + [rows_spec] * has_dsum,
      out_specs=[rows_spec, pl.BlockSpec((D,), lambda i: (i,))],
      out_shape=[jax.ShapeDtypeStruct((M, D), sum_MD.dtype),
                 jax.ShapeDtypeStruct((programs * D,), _F32)],
      compiler_params=plgpu.CompilerParams(num_warps=cfg.num_warps,
                                           num_stages=cfg.bwd_num_stages),
      interpret=cfg.interpret,
      name="add_rms_norm_bwd",
  )(sum_MD, rstd_M, dy_MD, scale_D, *([dsum_MD] if has_dsum else []))
  return dx, dscale.reshape(programs, D).sum(0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _fused(x_MD, delta_MD, scale_D, cfg):
  s, y, _ = _forward(x_MD, delta_MD, scale_D, cfg)
  return (x_MD if s is None else s), y


def _fused_fwd(x_MD, delta_MD, scale_D, cfg):
  # symbolic_zeros: the primals come wrapped; unwrap them (delta None has no leaves).
  x_MD, delta_MD, scale_D = jax.tree.map(lambda p: p.value, (x_MD, delta_MD, scale_D))
  s, y, rstd_M = _forward(x_MD, delta_MD, scale_D, cfg)
  s = x_MD if s is None else s
  return (s, y), (s, rstd_M, scale_D)


def _fused_bwd(cfg, res, cts):
  s, rstd_M, scale_D = res
  dsum, dy = (None if isinstance(c, SymbolicZero) else c for c in cts)
  if dy is None:  # y unused: only the residual path's gradient flows
    dx = jnp.zeros_like(s) if dsum is None else dsum.astype(s.dtype)
    dscale = jnp.zeros(scale_D.shape, _F32)
  else:  # a zero d_sum (sum unused, as after the last block) is not read
    dx, dscale = _backward(s, rstd_M, dy, dsum, scale_D, cfg)
  ddelta = None if cfg.delta_dtype is None else dx.astype(cfg.delta_dtype)
  return dx, ddelta, dscale.astype(scale_D.dtype)


_fused.defvjp(_fused_fwd, _fused_bwd, symbolic_zeros=True)


@functools.partial(jax.jit, static_argnames=("eps", "out_dtype", "block_rows", "num_warps",
                                             "bwd_row_blocks", "bwd_num_stages", "interpret"))
def add_rms_norm(x, delta, scale_D, *, eps, out_dtype, block_rows=BLOCK_ROWS,
                 num_warps=NUM_WARPS, bwd_row_blocks=BWD_ROW_BLOCKS,
                 bwd_num_stages=BWD_NUM_STAGES, interpret=False):
  """(sum = x + delta in x's dtype, y = RMSNorm(sum) * scale in out_dtype), both [..., D].

  delta None normalises x alone (sum is x). block_rows rows per forward program, power of two
  dividing the rows; backward programs take up to bwd_row_blocks such blocks each. The op
  (ssmax_jax/ops/rms_norm/api.py) checks the arrays; this checks the tiles.
  """
  D = x.shape[-1]
  M = math.prod(x.shape[:-1])
  _check_blocks(M, block_rows, bwd_row_blocks, bwd_num_stages)
  cfg = _Config(float(eps), np.dtype(out_dtype), block_rows, num_warps, bwd_row_blocks,
                bwd_num_stages, bool(interpret), None if delta is None else delta.dtype)
  x_MD = x.reshape(M, D)
  delta_MD = None if delta is None else delta.reshape(M, D)
  s_MD, y_MD = _fused(x_MD, delta_MD, scale_D, cfg)
  return s_MD.reshape(x.shape), y_MD.reshape(x.shape)
