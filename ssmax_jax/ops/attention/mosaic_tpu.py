"""Flash attention for TPU (Pallas Mosaic) with a fused float32 logit multiplier c.

Implements the kernel contract of `ssmax_jax.ops.attention`. Inside the kernels the layout is
head-major ([B,N,T,H], [B,K,S,H]); the wrapper transposes and pads T and S to whole blocks.
Per-query values (c, log-sum-exp, rowsum(dO*O), positions, segment ids) travel replicated over
the 128 lanes ([..., T, 128]) so their blocks are lane-dense and broadcast against [Tq,Tk] logits
by tiling; kv segment ids travel replicated over 8 sublanes ([B, 8, S]).

Block skipping: per query block the wrapper computes the inclusive range of kv blocks any of its
queries may attend (positions, causal, window, kv lengths), the min/max query position and the
min/max segment id; per kv block the min/max segment id and the range of query blocks reaching
it. These are scalar-prefetched. The index maps clamp the grid index into the range, so blocks
outside it are neither fetched again nor computed; blocks whose segment ranges do not meet are
not computed; blocks that no mask cuts into skip building the mask.

The forward kernel writes O in float32; the backward takes rowsum(dO*O) from it, because the
gradient of c is a sum of cancelling terms that O rounded to bf16 (the usual choice) would
make less accurate; the cost is a float32 residual of O's size.
"""
import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from ssmax_jax.ops.attention import tuning
from ssmax_jax.ops.attention.masks import POSITION_LIMIT
from ssmax_jax.ops.attention.kernel_common import block_ranges, dot_nn, dot_nt

LANES = 128
SUBLANES = 8
# A finite "minus infinity": masked logits never produce inf - inf = NaN in the running max.
MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)


@dataclasses.dataclass(frozen=True)
class Settings:
  """Query and key block lengths, multiples of 128; None: default_settings' for the length."""
  block_q: int | None = None
  block_k: int | None = None


def default_settings(head_dim, q_len, kv_len) -> Settings:
  """Per length, the first of tuning.TABLE['mosaic_tpu']'s blocks that pads little enough."""
  blocks = tuning.lookup("mosaic_tpu", head_dim)["blocks"]
  return Settings(_default_block(q_len, blocks), _default_block(kv_len, blocks))


@dataclasses.dataclass(frozen=True)
class _Static:
  """The static arguments of one call (hashable: a custom_vjp non-differentiable argument)."""
  scale: float
  causal: bool
  window: tuple[int, int] | None
  block_q: int
  block_k: int
  groups: int  # G = N // K
  has_segments: bool
  mask_lengths: bool  # kv lengths given, or S padded to a whole block
  interpret: object

  @property
  def needs_positions(self):
    return self.causal or self.window is not None


class _Scalars(NamedTuple):
  """Scalar-prefetched (SMEM) int32 arrays, flattened: [B] or [B*nq] (index b*nq+i) or [B*nk]."""
  kv_len: jax.Array  # [B] valid keys
  kv_lo: jax.Array  # [B*nq] first kv block a query block may attend
  kv_hi: jax.Array  # [B*nq] last one (kv_lo > kv_hi: none)
  pos_min: jax.Array  # [B*nq] smallest query position in the block
  pos_max: jax.Array  # [B*nq]
  q_seg_min: jax.Array  # [B*nq]
  q_seg_max: jax.Array  # [B*nq]
  kv_seg_min: jax.Array  # [B*nk]
  kv_seg_max: jax.Array  # [B*nk]
  q_lo: jax.Array  # [B*nk] first query block that reaches a kv block
  q_hi: jax.Array  # [B*nk] last one


def _default_block(length, blocks):
  """The first of `blocks` that pads `length` at most 1/8 beyond a multiple of 128, else the
  last."""
  minimal = pl.cdiv(length, LANES) * LANES
  for block in blocks[:-1]:
    if pl.cdiv(length, block) * block - minimal <= minimal // 8:
      return block
  return blocks[-1]


def _lanes(x):
  """[..., T] -> [..., T, 128]: one value per query, replicated over the lanes."""
  return jnp.broadcast_to(x[..., None], (*x.shape, LANES))


def _side_arrays(cfg, q_pos_BT, q_seg_BT, kv_seg_BS):
  """Positions and segment ids in the layout the kernels read (see _side_specs)."""
  side = []
  if cfg.needs_positions:
    side.append(_lanes(q_pos_BT))
  if cfg.has_segments:
    side.append(_lanes(q_seg_BT))
    B, S = kv_seg_BS.shape
    side.append(jnp.broadcast_to(kv_seg_BS[:, None, :], (B, SUBLANES, S)))
  return side


def _tile_lanes(x_RW, width):
  """[Q,128] lane-replicated values -> [Q,width] (width <= 128 or a multiple of 128)."""
  if width <= LANES:
    return x_RW[:, :width]
  return jnp.tile(x_RW, (1, width // LANES))


def _precision(dtype):
  # float32 inputs: full precision; others: the MXU's native passes.
  return jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None


def _dot_nt(a, b):  # a [M,H] . b [N,H] -> [M,N] float32
  return dot_nt(a, b, _precision(a.dtype))


def _dot_nn(a, b):  # a [M,K] . b [K,N] -> [M,N] float32
  return dot_nn(a, b, _precision(a.dtype))


def _split_rows(x_RH):
  """(x with non-finite entries zeroed, [R,1] float32: 0, or NaN on a row that had one)."""
  finite_RH = jnp.isfinite(x_RH.astype(jnp.float32))   # Mosaic's is_finite takes float32 only
  bad_R1 = jnp.max(jnp.where(finite_RH, 0.0, 1.0), axis=1, keepdims=True)
  return jnp.where(finite_RH, x_RH, 0).astype(x_RH.dtype), jnp.where(bad_R1 > 0, jnp.nan, 0.0)


def _split_cols(x_CH):
  """(x with non-finite entries zeroed, [1,C] float32: 0, or NaN for a row of x that had one).

  The per-row flag is wanted along lanes; a ones [8,H] matmul moves it there (a transpose of a
  [C,1] column would need a relayout)."""
  finite_CH = jnp.isfinite(x_CH.astype(jnp.float32))   # Mosaic's is_finite takes float32 only
  bad_CH = jnp.where(finite_CH, 0.0, 1.0).astype(jnp.float32)
  count_8C = dot_nt(jnp.ones((SUBLANES, x_CH.shape[1]), jnp.float32), bad_CH,
                    jax.lax.Precision.HIGHEST)
  return (jnp.where(finite_CH, x_CH, 0).astype(x_CH.dtype),
          jnp.where(count_8C[0:1] > 0, jnp.nan, 0.0))


# ----------------------------------------------------------------------------------------------
# Masks, block ranges, block classification.


def _allowed_RC(cfg, b, kv_block, sc, q_pos_ref, q_seg_ref, kv_seg_ref):
  """Boolean [Tq,Tk] mask of one block pair, or None when nothing can be masked."""
  shape = (cfg.block_q, cfg.block_k)
  reps = cfg.block_k // LANES
  key_RC = kv_block * cfg.block_k + jax.lax.broadcasted_iota(jnp.int32, shape, 1)
  ok_RC = None

  def both(x, y):
    return y if x is None else jnp.logical_and(x, y)

  if cfg.needs_positions:
    pos_RC = jnp.tile(q_pos_ref[0], (1, reps))
    if cfg.causal:
      ok_RC = both(ok_RC, key_RC <= pos_RC)
    if cfg.window is not None:
      left, right = cfg.window
      ok_RC = both(ok_RC, (key_RC >= pos_RC - left) & (key_RC <= pos_RC + right))
  if cfg.has_segments:
    seg_RC = jnp.tile(q_seg_ref[0], (1, reps))
    ok_RC = both(ok_RC, seg_RC == kv_seg_ref[0, 0:1, :])
  if cfg.mask_lengths:
    ok_RC = both(ok_RC, key_RC < sc.kv_len[b])
  return ok_RC


def _classify(cfg, sc, b, i, j, nq, nk):
  """(run, full) scalars: the block pair has an allowed key / every pair in it is allowed."""
  f, g = b * nq + i, b * nk + j
  run = (sc.kv_lo[f] <= j) & (j <= sc.kv_hi[f])
  first_key = j * cfg.block_k
  last_key = first_key + cfg.block_k - 1
  full = True
  if cfg.causal:
    full &= last_key <= sc.pos_min[f]
  if cfg.window is not None:
    left, right = cfg.window
    full &= (first_key >= sc.pos_max[f] - left) & (last_key <= sc.pos_min[f] + right)
  if cfg.mask_lengths:
    full &= last_key < sc.kv_len[b]
  if cfg.has_segments:
    run &= (sc.q_seg_min[f] <= sc.kv_seg_max[g]) & (sc.kv_seg_min[g] <= sc.q_seg_max[f])
    full &= ((sc.q_seg_min[f] == sc.q_seg_max[f]) & (sc.kv_seg_min[g] == sc.kv_seg_max[g])
             & (sc.q_seg_min[f] == sc.kv_seg_min[g]))
  return run, full


def _when_block(cfg, sc, b, i, j, nq, nk, body):
  """Runs body(masked) on the block pair if it attends anything; masked=False when full."""
  run, full = _classify(cfg, sc, b, i, j, nq, nk)
  if full is True:  # no mask can cut into any block
    pl.when(run)(lambda: body(False))
    return
  pl.when(run & full)(lambda: body(False))
  pl.when(run & jnp.logical_not(full))(lambda: body(True))


def _scalars(cfg, q_pos_BT, q_seg_BT, kv_seg_BS, kv_len_B):
  """Every scalar-prefetched array, from padded [B,Tp] / [B,Sp] inputs."""
  B, T = q_pos_BT.shape
  S = kv_seg_BS.shape[1]
  nq, nk = T // cfg.block_q, S // cfg.block_k
  pos_min_BI, pos_max_BI = block_ranges(q_pos_BT, cfg.block_q)
  first_BI = jnp.zeros((B, nq), jnp.int32)
  last_BI = jnp.broadcast_to(kv_len_B[:, None] - 1, (B, nq))
  if cfg.window is not None:
    left, right = cfg.window
    first_BI = jnp.maximum(first_BI, pos_min_BI - left)
    last_BI = jnp.minimum(last_BI, pos_max_BI + (min(right, 0) if cfg.causal else right))
  elif cfg.causal:
    last_BI = jnp.minimum(last_BI, pos_max_BI)
  empty_BI = last_BI < first_BI
  kv_lo_BI = jnp.where(empty_BI, 1, first_BI // cfg.block_k)
  kv_hi_BI = jnp.where(empty_BI, 0, jnp.minimum(last_BI // cfg.block_k, nk - 1))

  # Query blocks reaching each kv block (by position and length; segments are checked per step).
  kv_J = jnp.arange(nk)
  reach_BIJ = (kv_lo_BI[:, :, None] <= kv_J) & (kv_J <= kv_hi_BI[:, :, None])
  q_I1 = jnp.arange(nq)[:, None]
  q_lo_BJ = jnp.where(reach_BIJ, q_I1, nq).min(1)
  q_hi_BJ = jnp.where(reach_BIJ, q_I1, -1).max(1)
  none_BJ = q_hi_BJ < q_lo_BJ
  q_lo_BJ, q_hi_BJ = jnp.where(none_BJ, 0, q_lo_BJ), jnp.where(none_BJ, 0, q_hi_BJ)

  q_seg_min_BI, q_seg_max_BI = block_ranges(q_seg_BT, cfg.block_q)
  kv_seg_min_BJ, kv_seg_max_BJ = block_ranges(kv_seg_BS, cfg.block_k)
  flat = lambda x: x.reshape(-1).astype(jnp.int32)
  return _Scalars(
      kv_len=flat(kv_len_B), kv_lo=flat(kv_lo_BI), kv_hi=flat(kv_hi_BI), pos_min=flat(pos_min_BI),
      pos_max=flat(pos_max_BI), q_seg_min=flat(q_seg_min_BI), q_seg_max=flat(q_seg_max_BI),
      kv_seg_min=flat(kv_seg_min_BJ), kv_seg_max=flat(kv_seg_max_BJ), q_lo=flat(q_lo_BJ),
      q_hi=flat(q_hi_BJ))


def _clamp(i, lo, hi):
  """Grid index clamped into [lo, hi]: steps outside re-use the last block (no new DMA)."""
  return jnp.minimum(jnp.maximum(i, lo), jnp.maximum(hi, 0))


def _side_refs(cfg, refs):
  q_pos_ref = q_seg_ref = kv_seg_ref = None
  if cfg.needs_positions:
    q_pos_ref, *refs = refs
  if cfg.has_segments:
    q_seg_ref, kv_seg_ref, *refs = refs
  return (q_pos_ref, q_seg_ref, kv_seg_ref), refs


def _side_specs(cfg, q_index, kv_index):
  """BlockSpecs of positions / segment ids; q_index, kv_index: index map args -> (b, block)."""
  specs = []
  if cfg.needs_positions:
    specs.append(pl.BlockSpec((1, cfg.block_q, LANES), lambda *a: (*q_index(*a), 0)))
  if cfg.has_segments:
    specs.append(pl.BlockSpec((1, cfg.block_q, LANES), lambda *a: (*q_index(*a), 0)))
    specs.append(pl.BlockSpec((1, SUBLANES, cfg.block_k),
                              lambda *a: (kv_index(*a)[0], 0, kv_index(*a)[1])))
  return specs


def _q_major_specs(cfg, nq, H):
  """Specs for grids (b, h, q block, kv block): q-side blocks fixed, kv blocks clamped."""
  G = cfg.groups

  def kv_block(b, i, j, sc):
    sc = _Scalars(*sc)
    return _clamp(j, sc.kv_lo[b * nq + i], sc.kv_hi[b * nq + i])

  q_spec = pl.BlockSpec((1, 1, cfg.block_q, H), lambda b, h, i, j, *_: (b, h, i, 0))
  kv_spec = pl.BlockSpec((1, 1, cfg.block_k, H),
                         lambda b, h, i, j, *sc: (b, jax.lax.div(h, G), kv_block(b, i, j, sc), 0))
  row_spec = pl.BlockSpec((1, 1, cfg.block_q, LANES), lambda b, h, i, j, *_: (b, h, i, 0))
  side_specs = _side_specs(cfg, lambda b, h, i, j, *_: (b, i),
                           lambda b, h, i, j, *sc: (b, kv_block(b, i, j, sc)))
  return q_spec, kv_spec, row_spec, side_specs


# ----------------------------------------------------------------------------------------------
# Forward.


def _fwd_kernel(*refs, cfg):
  n = len(_Scalars._fields)
  sc = _Scalars(*refs[:n])
  q_ref, k_ref, v_ref, c_ref, *refs = refs[n:]
  side_refs, (o_ref, lse_ref, m_ref, l_ref, acc_ref) = _side_refs(cfg, refs)
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  nq, nk = pl.num_programs(2), pl.num_programs(3)
  H = acc_ref.shape[-1]
  reps = cfg.block_k // LANES

  @pl.when(j == 0)
  def _init():
    m_ref[...] = jnp.full(m_ref.shape, MASKED, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  def step(masked):
    q_RH, k_CH, v_CH = q_ref[0, 0], k_ref[0, 0], v_ref[0, 0]
    cs_RW = c_ref[0, 0] * cfg.scale
    z_RC = _dot_nt(q_RH, k_CH) * jnp.tile(cs_RW, (1, reps))
    ok_RC = _allowed_RC(cfg, b, j, sc, *side_refs) if masked else None
    if ok_RC is not None:
      # p @ v sees clean rows of v; a bad row's NaN goes to the logits that attend it.
      v_CH, v_bad_1C = _split_cols(v_CH)
      z_RC = jnp.where(ok_RC, z_RC + v_bad_1C, MASKED)
    m_prev_RW = m_ref[...]
    m_next_RW = jnp.maximum(m_prev_RW, z_RC.max(axis=1, keepdims=True))
    p_RC = jnp.exp(z_RC - jnp.tile(m_next_RW, (1, reps)))
    if ok_RC is not None:
      p_RC = jnp.where(ok_RC, p_RC, 0.0)
    alpha_RW = jnp.exp(m_prev_RW - m_next_RW)
    l_ref[...] = alpha_RW * l_ref[...] + p_RC.sum(axis=1, keepdims=True)
    m_ref[...] = m_next_RW
    pv_RH = _dot_nn(p_RC.astype(v_CH.dtype), v_CH)
    acc_ref[...] = acc_ref[...] * _tile_lanes(alpha_RW, H) + pv_RH

  _when_block(cfg, sc, b, i, j, nq, nk, step)

  @pl.when(j == nk - 1)
  def _finish():
    l_RW = l_ref[...]
    attends_RW = l_RW != 0.0  # a NaN row (it attends a NaN) stays NaN, not zeros
    safe_l_RW = jnp.where(attends_RW, l_RW, 1.0)
    o_ref[0, 0] = acc_ref[...] * _tile_lanes(jnp.where(attends_RW, 1.0 / safe_l_RW, 0.0), H)
    # +inf for a query with no key: exp(z - lse) is then 0 in the backward.
    lse_ref[0, 0] = jnp.where(attends_RW, m_ref[...] + jnp.log(safe_l_RW), jnp.inf)


def _forward(cfg, q_BNTH, k_BKSH, v_BKSH, c_BNTW, ids, sc):
  B, N, T, H = q_BNTH.shape
  nq, nk = T // cfg.block_q, k_BKSH.shape[2] // cfg.block_k
  q_spec, kv_spec, row_spec, side_specs = _q_major_specs(cfg, nq, H)
  return pl.pallas_call(
      functools.partial(_fwd_kernel, cfg=cfg),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=len(sc), grid=(B, N, nq, nk),
          in_specs=[q_spec, kv_spec, kv_spec, row_spec, *side_specs],
          out_specs=[q_spec, row_spec],
          scratch_shapes=[pltpu.VMEM((cfg.block_q, LANES), jnp.float32),
                          pltpu.VMEM((cfg.block_q, LANES), jnp.float32),
                          pltpu.VMEM((cfg.block_q, H), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct(q_BNTH.shape, jnp.float32),
                 jax.ShapeDtypeStruct((B, N, T, LANES), jnp.float32)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=cfg.interpret,
      name="ssmax_flash_fwd",
  )(*sc, q_BNTH, k_BKSH, v_BKSH, c_BNTW, *_side_arrays(cfg, *ids))


# ----------------------------------------------------------------------------------------------
# Backward: one kernel for dQ and dc (loops over kv blocks), one for dK and dV (loops over the
# G query heads of a kv head and over query blocks).


def _block_probs(cfg, b, j, sc, side_refs, masked, q_ref, k_ref, v_ref, do_ref, c_ref, lse_ref,
                 clean):
  """A block pair's q, k, v, dO, multiplier * scale, element mask (None: unmasked),
  probabilities and q.k before the multiplier: both kernels' backward step starts here.

  On a masked pair the operand `clean` ('k' or 'q') that the step multiplies by a zero-filled
  gradient comes back with non-finite entries zeroed, and its rows' NaN added to the allowed
  probabilities (0 * NaN in that matmul would reach every row of the block)."""
  reps = cfg.block_k // LANES
  q_RH, k_CH, v_CH, do_RH = q_ref[0, 0], k_ref[0, 0], v_ref[0, 0], do_ref[0, 0]
  cs_RW = c_ref[0, 0] * cfg.scale
  ok_RC = _allowed_RC(cfg, b, j, sc, *side_refs) if masked else None
  bad = None
  if ok_RC is not None:
    if clean == "k":
      k_CH, bad = _split_cols(k_CH)
    else:
      q_RH, bad = _split_rows(q_RH)
  qk_RC = _dot_nt(q_RH, k_CH)
  p_RC = jnp.exp(qk_RC * jnp.tile(cs_RW, (1, reps)) - jnp.tile(lse_ref[0, 0], (1, reps)))
  if ok_RC is not None:
    p_RC = jnp.where(ok_RC, p_RC + bad, 0.0)
  return q_RH, k_CH, v_CH, do_RH, cs_RW, ok_RC, p_RC, qk_RC


def _dq_kernel(*refs, cfg):
  n = len(_Scalars._fields)
  sc = _Scalars(*refs[:n])
  q_ref, k_ref, v_ref, c_ref, lse_ref, di_ref, do_ref, *refs = refs[n:]
  side_refs, (dq_ref, dc_ref, dq_acc_ref, dc_acc_ref) = _side_refs(cfg, refs)
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  nq, nk = pl.num_programs(2), pl.num_programs(3)
  H = dq_acc_ref.shape[-1]
  reps = cfg.block_k // LANES

  @pl.when(j == 0)
  def _init():
    dq_acc_ref[...] = jnp.zeros(dq_acc_ref.shape, jnp.float32)
    dc_acc_ref[...] = jnp.zeros(dc_acc_ref.shape, jnp.float32)

  def step(masked):
    _, k_CH, v_CH, do_RH, _, ok_RC, p_RC, qk_RC = _block_probs(
        cfg, b, j, sc, side_refs, masked, q_ref, k_ref, v_ref, do_ref, c_ref, lse_ref, "k")
    dp_RC = _dot_nt(do_RH, v_CH)
    dz_RC = p_RC * (dp_RC - jnp.tile(di_ref[0, 0], (1, reps)))  # d loss / d logit
    if ok_RC is not None:  # dO . v is NaN on a bad row of v, masked or not
      dz_RC = jnp.where(ok_RC, dz_RC, 0.0)
    dq_acc_ref[...] += _dot_nn(dz_RC.astype(k_CH.dtype), k_CH)
    # dc from the float32 products, not from dQ: dQ's matmul rounds dz to k's dtype, and dc is
    # a sum of terms that cancel (each row of dz sums to zero).
    dc_acc_ref[...] += (dz_RC * qk_RC).sum(axis=1, keepdims=True)

  _when_block(cfg, sc, b, i, j, nq, nk, step)

  @pl.when(j == nk - 1)
  def _finish():
    cs_RW = c_ref[0, 0] * cfg.scale
    dq_ref[0, 0] = (dq_acc_ref[...] * _tile_lanes(cs_RW, H)).astype(dq_ref.dtype)
    dc_ref[0, 0] = dc_acc_ref[...] * cfg.scale


def _dkv_kernel(*refs, cfg):
  n = len(_Scalars._fields)
  sc = _Scalars(*refs[:n])
  q_ref, k_ref, v_ref, c_ref, lse_ref, di_ref, do_ref, *refs = refs[n:]
  side_refs, (dk_ref, dv_ref, dk_acc_ref, dv_acc_ref) = _side_refs(cfg, refs)
  b, j, g, i = pl.program_id(0), pl.program_id(2), pl.program_id(3), pl.program_id(4)
  nk, G, nq = pl.num_programs(2), pl.num_programs(3), pl.num_programs(4)
  reps = cfg.block_k // LANES

  @pl.when((g == 0) & (i == 0))
  def _init():
    dk_acc_ref[...] = jnp.zeros(dk_acc_ref.shape, jnp.float32)
    dv_acc_ref[...] = jnp.zeros(dv_acc_ref.shape, jnp.float32)

  def step(masked):
    q_RH, _, v_CH, do_RH, cs_RW, ok_RC, p_RC, _ = _block_probs(
        cfg, b, j, sc, side_refs, masked, q_ref, k_ref, v_ref, do_ref, c_ref, lse_ref, "q")
    dv_acc_ref[...] += _dot_nn(p_RC.T.astype(do_RH.dtype), do_RH)
    dp_RC = _dot_nt(do_RH, v_CH)
    ds_RC = p_RC * (dp_RC - jnp.tile(di_ref[0, 0], (1, reps))) * jnp.tile(cs_RW, (1, reps))
    if ok_RC is not None:  # dO . v is NaN on a bad row of v, masked or not
      ds_RC = jnp.where(ok_RC, ds_RC, 0.0)
    dk_acc_ref[...] += _dot_nn(ds_RC.T.astype(q_RH.dtype), q_RH)

  _when_block(cfg, sc, b, i, j, nq, nk, step)

  @pl.when((g == G - 1) & (i == nq - 1))
  def _finish():
    dk_ref[0, 0] = dk_acc_ref[...].astype(dk_ref.dtype)
    dv_ref[0, 0] = dv_acc_ref[...].astype(dv_ref.dtype)


def _backward(cfg, res, do_BNTH):
  q_BNTH, k_BKSH, v_BKSH, c_BNT, ids, sc, o32_BNTH, lse_BNT = res
  B, N, T, H = q_BNTH.shape
  K, S = k_BKSH.shape[1:3]
  nq, nk = T // cfg.block_q, S // cfg.block_k
  G = cfg.groups
  di_BNT = (o32_BNTH * do_BNTH.astype(jnp.float32)).sum(-1)
  ins = (q_BNTH, k_BKSH, v_BKSH, _lanes(c_BNT), _lanes(lse_BNT), _lanes(di_BNT), do_BNTH,
         *_side_arrays(cfg, *ids))
  params = lambda sem: pltpu.CompilerParams(dimension_semantics=sem)

  q_spec, kv_spec, row_spec, side_specs = _q_major_specs(cfg, nq, H)
  dq_BNTH, dc_BNTW = pl.pallas_call(
      functools.partial(_dq_kernel, cfg=cfg),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=len(sc), grid=(B, N, nq, nk),
          in_specs=[q_spec, kv_spec, kv_spec, row_spec, row_spec, row_spec, q_spec, *side_specs],
          out_specs=[q_spec, row_spec],
          scratch_shapes=[pltpu.VMEM((cfg.block_q, H), jnp.float32),
                          pltpu.VMEM((cfg.block_q, LANES), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct(q_BNTH.shape, q_BNTH.dtype),
                 jax.ShapeDtypeStruct((B, N, T, LANES), jnp.float32)],
      compiler_params=params(("parallel", "parallel", "parallel", "arbitrary")),
      interpret=cfg.interpret,
      name="ssmax_flash_dq",
  )(*sc, *ins)

  # dK, dV: grid (b, kv head, kv block, group member, q block); q-side blocks clamped.
  def q_block(b, j, i, sc):
    sc = _Scalars(*sc)
    return _clamp(i, sc.q_lo[b * nk + j], sc.q_hi[b * nk + j])

  q_spec = pl.BlockSpec((1, 1, cfg.block_q, H),
                        lambda b, kh, j, g, i, *sc: (b, kh * G + g, q_block(b, j, i, sc), 0))
  row_spec = pl.BlockSpec((1, 1, cfg.block_q, LANES),
                          lambda b, kh, j, g, i, *sc: (b, kh * G + g, q_block(b, j, i, sc), 0))
  kv_spec = pl.BlockSpec((1, 1, cfg.block_k, H), lambda b, kh, j, g, i, *_: (b, kh, j, 0))
  side_specs = _side_specs(cfg, lambda b, kh, j, g, i, *sc: (b, q_block(b, j, i, sc)),
                           lambda b, kh, j, g, i, *_: (b, j))
  dk_BKSH, dv_BKSH = pl.pallas_call(
      functools.partial(_dkv_kernel, cfg=cfg),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=len(sc), grid=(B, K, nk, G, nq),
          in_specs=[q_spec, kv_spec, kv_spec, row_spec, row_spec, row_spec, q_spec, *side_specs],
          out_specs=[kv_spec, kv_spec],
          scratch_shapes=[pltpu.VMEM((cfg.block_k, H), jnp.float32),
                          pltpu.VMEM((cfg.block_k, H), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct(k_BKSH.shape, k_BKSH.dtype),
                 jax.ShapeDtypeStruct(v_BKSH.shape, v_BKSH.dtype)],
      compiler_params=params(("parallel", "parallel", "parallel", "arbitrary", "arbitrary")),
      interpret=cfg.interpret,
      name="ssmax_flash_dkv",
  )(*sc, *ins)
  return dq_BNTH, dk_BKSH, dv_BKSH, dc_BNTW[..., 0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(cfg, q_BNTH, k_BKSH, v_BKSH, c_BNT, ids, sc):
  """ids: (q_pos [B,Tp], q_seg [B,Tp], kv_seg [B,Sp]) int32; sc: _Scalars."""
  return _attention_fwd(cfg, q_BNTH, k_BKSH, v_BKSH, c_BNT, ids, sc)[0]


def _attention_fwd(cfg, q_BNTH, k_BKSH, v_BKSH, c_BNT, ids, sc):
  o32_BNTH, lse_BNTW = _forward(cfg, q_BNTH, k_BKSH, v_BKSH, _lanes(c_BNT), ids, sc)
  # Residuals keep one value per query: the 128-lane copies exist only around each kernel call.
  res = (q_BNTH, k_BKSH, v_BKSH, c_BNT, ids, sc, o32_BNTH, lse_BNTW[..., 0])
  return o32_BNTH.astype(q_BNTH.dtype), res


def _attention_bwd(cfg, res, do_BNTH):
  dq, dk, dv, dc = _backward(cfg, res, do_BNTH)
  return dq, dk, dv, dc, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


# ----------------------------------------------------------------------------------------------
# Public entry point.


def kernel_reason(q_BTNH, k_BSKH, v_BSKH, c_BTN, q_pos_BT, q_seg_BT, kv_seg_BS, kv_len_B, *,
                  window, settings):
  """Why the TPU kernels cannot take these kernel-contract arguments (None when they can)."""
  if q_BTNH.ndim != 4 or k_BSKH.ndim != 4:
    return f"q {q_BTNH.shape} and k {k_BSKH.shape} must be rank 4 ([B,T,N,H], [B,S,K,H])."
  B, T, N, H = q_BTNH.shape
  S, K = k_BSKH.shape[1:3]
  if v_BSKH.shape != k_BSKH.shape:
    return f"v {v_BSKH.shape} must have k's shape {k_BSKH.shape}."
  if k_BSKH.shape[0] != B or k_BSKH.shape[3] != H:
    return f"k/v {k_BSKH.shape} must share batch and head dim with q {q_BTNH.shape}."
  if N % K:
    return f"q has {N} heads, k/v {K}: N % K must be 0 (GQA)."
  if q_BTNH.dtype == jnp.float64:
    return "float64 inputs: the kernels compute in float32; use the 'xla' backend."
  if H > LANES and H % LANES:
    return f"head dim {H} is over {LANES} and not a multiple of it; pad it to one."
  if c_BTN.shape != (B, T, N):
    return f"c has shape {c_BTN.shape}; expected [B,T,N]={[B, T, N]}."
  if q_pos_BT is not None and q_pos_BT.shape != (B, T):
    return f"q_pos has shape {q_pos_BT.shape}; expected [B,T]={[B, T]}."
  if (q_seg_BT is None) != (kv_seg_BS is None):
    return "q_seg and kv_seg must be given together (or both None)."
  if q_seg_BT is not None and (q_seg_BT.shape != (B, T) or kv_seg_BS.shape != (B, S)):
    return f"q_seg {q_seg_BT.shape} / kv_seg {kv_seg_BS.shape} must be [B,T] / [B,S]."
  if kv_len_B is not None and kv_len_B.shape != (B,):
    return f"kv_len has shape {kv_len_B.shape}; expected [B]=[{B}]."
  if window is not None and not (isinstance(window, int) or len(window) == 2):
    return f"window={window!r}; pass (left, right), an int, or None."
  for name, block in (("block_q", settings.block_q), ("block_k", settings.block_k)):
    if block is not None and (block <= 0 or block % LANES):
      return f"settings.{name}={block} must be a positive multiple of {LANES}."
  return None


def unsupported_reason(*, query, key, spec, bias, default_positions, platform):
  """Why the op cannot hand this call to the TPU kernels (None when it can); the kernel's own
  argument checks (kernel_reason) raise when it runs."""
  del key, default_positions, platform
  if query.dtype == jnp.float64:
    return "float64 (the kernels compute in float32; 'xla' computes float64)"
  if bias is not None or spec.mask_BNTS is not None:
    return ("no dense mask or bias (express the mask with is_causal/segment_ids/"
            "local_window_size/lengths, or use 'xla')")
  return None


def flash_attention(q_BTNH, k_BSKH, v_BSKH, c_BTN, q_pos_BT, q_seg_BT, kv_seg_BS, kv_len_B, *,
                    scale, causal, window, settings=None, interpret=False):
  """Softmax over allowed keys of c * scale * q.k, on TPU; see `ssmax_jax.ops.attention`.

  settings: a Settings; its None blocks take default_settings' (per length, from
  tuning.TABLE). float32 inputs are multiplied at Precision.HIGHEST. Head dims up to 128, or
  multiples of 128. interpret: False (compile for TPU), True or a `pltpu.InterpretParams`
  (run anywhere).
  """
  settings = Settings() if settings is None else settings
  reason = kernel_reason(q_BTNH, k_BSKH, v_BSKH, c_BTN, q_pos_BT, q_seg_BT, kv_seg_BS,
                         kv_len_B, window=window, settings=settings)
  if reason is not None:
    raise ValueError(reason)
  B, T, N, H = q_BTNH.shape
  S, K = k_BSKH.shape[1:3]
  default = default_settings(H, T, S)
  block_q = settings.block_q or default.block_q
  block_k = settings.block_k or default.block_k
  Tp, Sp = pl.cdiv(T, block_q) * block_q, pl.cdiv(S, block_k) * block_k
  if window is not None:
    left, right = (window, window) if isinstance(window, int) else window
    # Sides past masks.POSITION_LIMIT reach every key already; clipping keeps pos +- side in int32.
    window = (min(int(left), POSITION_LIMIT), min(int(right), POSITION_LIMIT))
  if interpret is True:
    interpret = pltpu.InterpretParams()
  cfg = _Static(scale=float(scale), causal=bool(causal), window=window, block_q=block_q,
                block_k=block_k, groups=N // K, has_segments=q_seg_BT is not None,
                mask_lengths=kv_len_B is not None or Sp != S, interpret=interpret)

  # Padded queries repeat the last real position and segment (so block ranges do not widen);
  # their rows are dropped at the end and get zero cotangents.
  pad_q = lambda x: jnp.pad(jnp.asarray(x, jnp.int32), ((0, 0), (0, Tp - T)), mode="edge")
  if q_pos_BT is None:
    q_pos_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  q_pos_BT = pad_q(q_pos_BT)
  if kv_len_B is None:
    kv_len_B = jnp.full((B,), S, jnp.int32)
  kv_len_B = jnp.clip(jnp.asarray(kv_len_B, jnp.int32), 0, S)
  if cfg.has_segments:
    q_seg_BT = pad_q(q_seg_BT)
    kv_seg_BS = jnp.pad(jnp.asarray(kv_seg_BS, jnp.int32), ((0, 0), (0, Sp - S)), mode="edge")
  else:
    q_seg_BT, kv_seg_BS = jnp.zeros((B, Tp), jnp.int32), jnp.zeros((B, Sp), jnp.int32)
  sc = _scalars(cfg, q_pos_BT, q_seg_BT, kv_seg_BS, kv_len_B)

  pad_t = ((0, 0), (0, 0), (0, Tp - T), (0, 0))
  pad_s = ((0, 0), (0, 0), (0, Sp - S), (0, 0))
  q_BNTH = jnp.pad(jnp.transpose(q_BTNH, (0, 2, 1, 3)), pad_t)
  k_BKSH = jnp.pad(jnp.transpose(k_BSKH, (0, 2, 1, 3)), pad_s)
  v_BKSH = jnp.pad(jnp.transpose(v_BSKH, (0, 2, 1, 3)), pad_s)
  c_BNT = jnp.pad(jnp.transpose(jnp.asarray(c_BTN, jnp.float32), (0, 2, 1)),
                  ((0, 0), (0, 0), (0, Tp - T)))
  o_BNTH = _attention(cfg, q_BNTH, k_BKSH, v_BKSH, c_BNT, (q_pos_BT, q_seg_BT, kv_seg_BS), sc)
  return jnp.transpose(o_BNTH[:, :, :T], (0, 2, 1, 3))
