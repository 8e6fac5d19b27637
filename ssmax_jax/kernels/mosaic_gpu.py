"""Flash attention for Hopper (Pallas Mosaic GPU) with the per-query multiplier c fused.

Forward: each block runs three warpgroups. Two compute warpgroups own 64 query rows each
(wgmma with the accumulator in registers) and take turns on the tensor cores through a
shared barrier, so that one does its softmax while the other multiplies; the third
warpgroup streams K and V tiles with TMA into a ring of shared-memory slots. Logits are
multiplied by c*scale*log2(e) row-wise and exponentiated in base 2, as in triton_gpu, so
the log-sum-exp it saves (base 2) is the one both backwards expect.

Backward: an XLA prologue packs lse, delta = rowsum(dO*O) and c per query ([B,N,3,T], one
TMA copy per tile), then two kernels with the same three-warpgroup layout recompute P:
- dq/dc: 128 query rows per block (64 per compute warpgroup) stream K/V tiles;
  S = Q.K^T and dP = dO.V^T on the tensor cores, dS = P*(dP - delta) in registers,
  dq += dS.K, dc += rowsum(dS*S) (float32), both scaled once at the end.
- dk/dv: 128 keys per block stream Q/dO tiles of every query head of the key head's
  group (GQA sums stay in registers); the tiles are transposed (keys x queries) so that
  P^T and dS^T*c are wgmma A operands straight from registers: dv += P^T.dO, dk += dS^T.Q.
Causal blocks skip the tiles above the diagonal and mask only the tiles that straddle it.

Scope of the Hopper path: bf16/f16, head dim 64 or 128, T == S and a
multiple of 128, key positions 0..S-1 with default query positions (q_pos_BT None), optional
causal mask, no window, segments or kv lengths. Every other call goes to the Pallas Triton
kernels of triton_gpu (forward and backward).
"""
import dataclasses
import functools
import math

import jax
from jax import lax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from ssmax_jax.kernels import triton_gpu

LOG2E = math.log2(math.e)
_ROWS_PER_WG = 64   # one wgmma M tile per compute warpgroup


_ROW = plgpu.Layout.WGMMA.reduce(1)   # one value per row of a WGMMA tile
_COL = plgpu.Layout.WGMMA.reduce(0)   # one value per column of a WGMMA tile


@dataclasses.dataclass(frozen=True)
class Tiles:
  block_kv: int = 128     # forward: keys per pipeline step
  stages: int = 2         # forward: K/V shared-memory slots in flight
  dq_block_kv: int = 64   # backward dq/dc kernel: keys per step
  dq_stages: int = 2      # backward dq/dc kernel: K/V slots in flight
  dkv_block_q: int = 64   # backward dk/dv kernel: queries per step
  dkv_stages: int = 2     # backward dk/dv kernel: Q/dO slots in flight


def default_tiles(head_dim):
  # On an H200, 128 keys x 2 slots beat 64 x 2 and 64 x 3 at H=128 and H=64; 128 x 3 was
  # level with it at H=64 and exceeds shared memory at H=128.
  del head_dim
  return Tiles(128, 2)


def unsupported_reason(q_BTNH, k_BSKH, q_pos_BT, q_seg_BT, kv_len_B, window, tiles, interpret):
  """Why the Hopper path cannot take this call (None when it can)."""
  B, T, N, H = q_BTNH.shape
  S = k_BSKH.shape[1]
  if interpret:
    return "interpret mode"
  if jax.default_backend() != "gpu" or not any(
      name in jax.devices()[0].device_kind for name in ("H100", "H200")):
    return "not a Hopper GPU"
  if q_BTNH.dtype not in (jnp.bfloat16, jnp.float16) or k_BSKH.dtype != q_BTNH.dtype:
    return f"dtypes {q_BTNH.dtype}, {k_BSKH.dtype}"
  if H not in (64, 128):   # the head dims measured and tested on an H200
    return f"head dim {H}"
  if T != S or T % (2 * _ROWS_PER_WG) or any(
      S % blk for blk in (tiles.block_kv, tiles.dq_block_kv, tiles.dkv_block_q)):
    return f"T={T}, S={S}"
  if q_pos_BT is not None or q_seg_BT is not None or kv_len_B is not None or window is not None:
    return "positions, segments, lengths or window"
  return None


def _fwd_kernel(q_ref, k_ref, v_ref, c_ref, o_ref, lse_ref, smem, ready, free, turn, *,
                scale, causal, block_kv, stages, n_tiles, group):
  q_smem2, k_smem, v_smem, vec_smem2 = smem
  k_ready, v_ready, q_ready, c_ready = ready
  k_free, v_free = free
  bq = _ROWS_PER_WG
  dtype = q_ref.dtype
  b, h, wg = lax.axis_index("b"), lax.axis_index("h"), lax.axis_index("wg")
  # Causal: the most expensive query tiles first, so the tail of the launch is short.
  tile = (n_tiles - 1 - lax.axis_index("t")) if causal else lax.axis_index("t")
  tile_row0 = tile * (2 * bq)
  if causal:
    steps = lax.div(tile_row0 + 2 * bq + block_kv - 1, block_kv)
    clean_steps = lax.div(tile_row0, block_kv)       # key blocks below the diagonal
  else:
    steps = clean_steps = k_ref.shape[1] // block_kv

  def take_turn():
    plgpu.barrier_arrive(turn)
    plgpu.barrier_wait(turn)

  @pl.when(wg < 2)
  def _compute():
    plgpu.set_max_registers(232, action="increase")
    q_smem, vec_smem = q_smem2.at[wg], vec_smem2.at[wg]
    row0 = tile_row0 + wg * bq
    plgpu.copy_gmem_to_smem(q_ref.at[b, pl.ds(row0, bq), h], q_smem, q_ready.at[wg])
    plgpu.copy_gmem_to_smem(c_ref.at[b, h, pl.ds(row0, bq)], vec_smem, c_ready.at[wg])
    plgpu.barrier_wait(c_ready.at[wg])
    row_mult = plgpu.load(vec_smem, layout=plgpu.Layout.WGMMA.reduce(1)) * (scale * LOG2E)
    plgpu.barrier_wait(q_ready.at[wg])
    head_dim = q_smem.shape[-1]
    m = plgpu.layout_cast(jnp.full((bq,), -jnp.inf, jnp.float32), plgpu.Layout.WGMMA.reduce(1))
    l = plgpu.layout_cast(jnp.zeros((bq,), jnp.float32), plgpu.Layout.WGMMA.reduce(1))
    acc = plgpu.layout_cast(jnp.zeros((bq, head_dim), jnp.float32), plgpu.Layout.WGMMA)
    rows_of = lambda x: lax.broadcast_in_dim(x, (bq, block_kv), [0])

    plgpu.barrier_wait(k_ready.at[0])
    pl.when(wg == 1)(take_turn)   # offset the two warpgroups by half a step

    def step(i, carry, masked):
      acc, m, l = carry
      slot = lax.rem(i, jnp.int32(stages))

      def logits(s_ref):
        plgpu.wgmma(s_ref, q_smem, k_smem.at[slot].transpose((1, 0)))
        take_turn()
        return s_ref[...]

      s = pl.run_scoped(logits, plgpu.ACC((bq, block_kv), jnp.float32))
      plgpu.barrier_arrive(k_free.at[slot])
      z = s * rows_of(row_mult)
      if masked:
        r = plgpu.broadcasted_iota(jnp.int32, (bq, block_kv), 0, layout=plgpu.Layout.WGMMA)
        j = plgpu.broadcasted_iota(jnp.int32, (bq, block_kv), 1, layout=plgpu.Layout.WGMMA)
        z = jnp.where(r + row0 >= j + i * block_kv, z, -jnp.inf)
      # Every row sees key 0 in its first step, so m is finite from then on.
      m_new = jnp.maximum(m, z.max(axis=1))
      alpha = jnp.exp2(m - m_new)
      p = jnp.exp2(z - rows_of(m_new))
      acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
      l = l * alpha + p.sum(axis=1)
      p_lo = p.astype(dtype)
      # Finish the softmax before handing the tensor cores to the other warpgroup.
      acc, l, m_new, p_lo = lax.optimization_barrier((acc, l, m_new, p_lo))
      plgpu.barrier_arrive(turn)
      plgpu.barrier_wait(v_ready.at[slot])
      plgpu.barrier_wait(turn)

      def mix(acc_ref):
        plgpu.wgmma(acc_ref, p_lo, v_smem.at[slot])
        nxt = i + 1

        @pl.when(nxt < steps)
        def _():
          plgpu.barrier_wait(k_ready.at[lax.rem(nxt, jnp.int32(stages))])

      acc = pl.run_state(mix)(plgpu.ACC.init(acc))
      plgpu.barrier_arrive(v_free.at[slot])
      return acc, m_new, l

    carry = lax.fori_loop(0, clean_steps, functools.partial(step, masked=False), (acc, m, l))
    if causal:
      carry = lax.fori_loop(clean_steps, steps, functools.partial(step, masked=True), carry)
    acc, m, l = carry
    pl.when(wg == 0)(take_turn)   # balance the offset taken before the loop

    inv_l = 1.0 / l
    q_smem[...] = (acc * lax.broadcast_in_dim(inv_l, acc.shape, [0])).astype(dtype)
    vec_smem[...] = m + jnp.log(l) * LOG2E
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(q_smem, o_ref.at[b, pl.ds(row0, bq), h])
    plgpu.copy_smem_to_gmem(vec_smem, lse_ref.at[b, h, pl.ds(row0, bq)])
    plgpu.wait_smem_to_gmem(0)

  @pl.when(wg == 2)
  def _stream_kv():
    plgpu.set_max_registers(40, action="decrease")
    kv_head = lax.div(h, jnp.int32(group))

    def fetch(i, slot):
      rows = (b, pl.ds(i * block_kv, block_kv), kv_head)
      plgpu.copy_gmem_to_smem(k_ref.at[rows], k_smem.at[slot], k_ready.at[slot])
      plgpu.copy_gmem_to_smem(v_ref.at[rows], v_smem.at[slot], v_ready.at[slot])

    for i in range(stages):
      pl.when(i < steps)(functools.partial(fetch, i, i))

    @pl.loop(stages, steps)
    def _(i):
      slot = lax.rem(i, jnp.int32(stages))
      rows = (b, pl.ds(i * block_kv, block_kv), kv_head)
      plgpu.barrier_wait(k_free.at[slot])
      plgpu.copy_gmem_to_smem(k_ref.at[rows], k_smem.at[slot], k_ready.at[slot])
      plgpu.barrier_wait(v_free.at[slot])
      plgpu.copy_gmem_to_smem(v_ref.at[rows], v_smem.at[slot], v_ready.at[slot])


def _forward(q, k, v, c_BTN, *, scale, causal, tiles):
  """(o [B,T,N,H], lse [B,N,T] float32 in base-2 units)."""
  B, T, N, H = q.shape
  K = k.shape[2]
  n_tiles = T // (2 * _ROWS_PER_WG)
  c_BNT = jnp.transpose(c_BTN.astype(jnp.float32), (0, 2, 1))   # rows contiguous for TMA
  kernel = functools.partial(_fwd_kernel, scale=scale, causal=causal, block_kv=tiles.block_kv,
                             stages=tiles.stages, n_tiles=n_tiles, group=N // K)

  def entry(q_ref, k_ref, v_ref, c_ref, o_ref, lse_ref):
    swizzled = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
    smem = (
        plgpu.SMEM((2, _ROWS_PER_WG, H), q.dtype, transforms=swizzled),
        plgpu.SMEM((tiles.stages, tiles.block_kv, H), k.dtype, transforms=swizzled),
        plgpu.SMEM((tiles.stages, tiles.block_kv, H), v.dtype, transforms=swizzled),
        plgpu.SMEM((2, _ROWS_PER_WG), jnp.float32),
    )
    ready = (plgpu.Barrier(num_barriers=tiles.stages), plgpu.Barrier(num_barriers=tiles.stages),
             plgpu.Barrier(num_barriers=2), plgpu.Barrier(num_barriers=2))
    free = (plgpu.Barrier(num_arrivals=2, num_barriers=tiles.stages),) * 2
    pl.run_scoped(
        lambda *scratch: kernel(q_ref, k_ref, v_ref, c_ref, o_ref, lse_ref, *scratch),
        smem, ready, free, plgpu.Barrier(num_arrivals=2), collective_axes="wg")

  return plgpu.kernel(
      entry,
      out_type=(jax.ShapeDtypeStruct(q.shape, q.dtype),
                jax.ShapeDtypeStruct((B, N, T), jnp.float32)),
      grid=(N, n_tiles, B),
      grid_names=("h", "t", "b"),
      num_threads=3,
      thread_name="wg",
      compiler_params=plgpu.CompilerParams(approx_math=True),
  )(q, k, v, c_BNT)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _flash(q, k, v, c, scale, causal, tiles):
  return _forward(q, k, v, c, scale=scale, causal=causal, tiles=tiles)[0]


def _flash_fwd(q, k, v, c, scale, causal, tiles):
  o, lse = _forward(q, k, v, c, scale=scale, causal=causal, tiles=tiles)
  return o, (q, k, v, c, o, lse)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, vec_ref, dq_ref, dc_ref, smem, ready, free, *,
               scale, causal, block_kv, stages, n_tiles, group):
  """dq and dc of 128 query rows (two compute warpgroups of 64) streaming K/V tiles."""
  q_smem2, do_smem2, vec_smem2, k_smem, v_smem = smem
  k_ready, v_ready, rows_ready = ready
  k_free, v_free = free
  bq = _ROWS_PER_WG
  dtype = q_ref.dtype
  b, h, wg = lax.axis_index("b"), lax.axis_index("h"), lax.axis_index("wg")
  tile = (n_tiles - 1 - lax.axis_index("t")) if causal else lax.axis_index("t")
  tile_row0 = tile * (2 * bq)
  if causal:   # block_kv divides 2 * bq, so the last step ends on the tile's last row
    steps = lax.div(tile_row0 + 2 * bq, block_kv)
    clean_steps = lax.div(tile_row0, block_kv)
  else:
    steps = clean_steps = k_ref.shape[1] // block_kv

  @pl.when(wg < 2)
  def _compute():
    plgpu.set_max_registers(240, action="increase")
    q_smem, do_smem, vec_smem = q_smem2.at[wg], do_smem2.at[wg], vec_smem2.at[wg]
    row0 = tile_row0 + wg * bq
    rows = (b, pl.ds(row0, bq), h)
    plgpu.copy_gmem_to_smem(q_ref.at[rows], q_smem, rows_ready.at[wg])
    plgpu.copy_gmem_to_smem(do_ref.at[rows], do_smem, rows_ready.at[wg])
    plgpu.copy_gmem_to_smem(vec_ref.at[b, h, :, pl.ds(row0, bq)], vec_smem, rows_ready.at[wg])
    plgpu.barrier_wait(rows_ready.at[wg])
    lse_R, delta_R, c_R = (plgpu.load(vec_smem.at[r], layout=_ROW) for r in range(3))
    mult_R = c_R * (scale * LOG2E)
    rows_of = lambda x_R: lax.broadcast_in_dim(x_R, (bq, block_kv), [0])
    plgpu.barrier_wait(k_ready.at[0])

    def step(dq_acc, i, dc_R, masked):
      slot = lax.rem(i, jnp.int32(stages))

      def p_and_dp(s_acc, dp_acc):
        plgpu.wgmma(s_acc, q_smem, k_smem.at[slot].transpose((1, 0)))
        plgpu.barrier_wait(v_ready.at[slot])
        plgpu.wgmma(dp_acc, do_smem, v_smem.at[slot].transpose((1, 0)))
        # The exponentials overlap dO.V^T on the tensor cores.
        s_RC = plgpu.wgmma_accumulator_load(s_acc, wait_n=1)
        p_RC = jnp.exp2(s_RC * rows_of(mult_R) - rows_of(lse_R))
        if masked:
          r = plgpu.broadcasted_iota(jnp.int32, p_RC.shape, 0, layout=plgpu.Layout.WGMMA)
          j = plgpu.broadcasted_iota(jnp.int32, p_RC.shape, 1, layout=plgpu.Layout.WGMMA)
          p_RC = jnp.where(r + row0 >= j + i * block_kv, p_RC, 0.0)
        return s_RC, p_RC, dp_acc[...]

      acc = plgpu.ACC((bq, block_kv), jnp.float32)
      s_RC, p_RC, dp_RC = pl.run_scoped(p_and_dp, acc, acc)
      plgpu.barrier_arrive(v_free.at[slot])
      ds_RC = p_RC * (dp_RC - rows_of(delta_R))      # d loss / d logit, without c*scale
      # dc_i = scale * sum_j dS_ij (q_i . k_j), from dS in float32 (the row sums overlap dS.K).
      dc_R = dc_R + (ds_RC * s_RC).sum(axis=1)
      plgpu.wgmma(dq_acc, ds_RC.astype(dtype), k_smem.at[slot])
      nxt = i + 1

      @pl.when(nxt < steps)
      def _():
        plgpu.barrier_wait(k_ready.at[lax.rem(nxt, jnp.int32(stages))])

      plgpu.wgmma_wait(0)
      plgpu.barrier_arrive(k_free.at[slot])
      return dc_R

    def accumulate(dq_acc):
      dc_R = plgpu.layout_cast(jnp.zeros((bq,), jnp.float32), _ROW)
      dc_R = lax.fori_loop(0, clean_steps, functools.partial(step, dq_acc, masked=False), dc_R)
      if causal:
        dc_R = lax.fori_loop(clean_steps, steps, functools.partial(step, dq_acc, masked=True),
                             dc_R)
      return dq_acc[...], dc_R

    dq_RH, dc_R = pl.run_scoped(accumulate, plgpu.ACC(q_smem.shape, jnp.float32))
    vec_smem[0] = dc_R * scale
    do_smem[...] = (dq_RH * lax.broadcast_in_dim(c_R * scale, dq_RH.shape, [0])).astype(dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(do_smem, dq_ref.at[rows])
    plgpu.copy_smem_to_gmem(vec_smem.at[0], dc_ref.at[b, h, pl.ds(row0, bq)])
    plgpu.wait_smem_to_gmem(0)

  @pl.when(wg == 2)
  def _stream_kv():
    plgpu.set_max_registers(24, action="decrease")
    kv_head = lax.div(h, jnp.int32(group))

    def fetch(i, slot, wait):
      rows = (b, pl.ds(i * block_kv, block_kv), kv_head)
      if wait:
        plgpu.barrier_wait(k_free.at[slot])
      plgpu.copy_gmem_to_smem(k_ref.at[rows], k_smem.at[slot], k_ready.at[slot])
      if wait:
        plgpu.barrier_wait(v_free.at[slot])
      plgpu.copy_gmem_to_smem(v_ref.at[rows], v_smem.at[slot], v_ready.at[slot])

    for i in range(stages):
      pl.when(i < steps)(functools.partial(fetch, i, i, False))

    @pl.loop(stages, steps)
    def _(i):
      fetch(i, lax.rem(i, jnp.int32(stages)), True)


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, vec_ref, dk_ref, dv_ref, smem, ready, free, *,
                scale, causal, block_q, stages, group):
  """dk and dv of 128 keys (two compute warpgroups of 64) streaming Q/dO tiles of every query
  head of the key head's group, so that GQA sums stay in registers."""
  k_smem2, v_smem2, q_smem, do_smem, vec_smem = smem
  kv_ready, q_ready, do_ready = ready
  q_free, do_free = free
  bk = _ROWS_PER_WG
  dtype = q_ref.dtype
  b, kv_head, wg = lax.axis_index("b"), lax.axis_index("h"), lax.axis_index("wg")
  tile_key0 = lax.axis_index("t") * (2 * bk)   # causal: the first tiles see the most queries
  n_blocks = q_ref.shape[1] // block_q
  # Causal: query blocks before the key tile see none of it; the first (2*bk)//block_q
  # blocks from the tile's start straddle the diagonal and need the mask.
  first = lax.div(tile_key0, block_q) if causal else 0
  per_head = n_blocks - first
  n_masked = (2 * bk) // block_q if causal else 0
  steps = group * per_head

  @pl.when(wg < 2)
  def _compute():
    plgpu.set_max_registers(240, action="increase")
    k_smem, v_smem = k_smem2.at[wg], v_smem2.at[wg]
    key0 = tile_key0 + wg * bk
    keys = (b, pl.ds(key0, bk), kv_head)
    plgpu.copy_gmem_to_smem(k_ref.at[keys], k_smem, kv_ready.at[wg])
    plgpu.copy_gmem_to_smem(v_ref.at[keys], v_smem, kv_ready.at[wg])
    plgpu.barrier_wait(kv_ready.at[wg])
    cols_of = lambda x_C: lax.broadcast_in_dim(x_C, (bk, block_q), [1])

    def step(i, qb, dk_acc, dv_acc, masked):
      """Global step i (pipeline slot) on query block qb; tiles are transposed: keys x queries."""
      slot = lax.rem(i, jnp.int32(stages))
      plgpu.barrier_wait(q_ready.at[slot])

      def scores(s_acc):
        plgpu.wgmma(s_acc, k_smem, q_smem.at[slot].transpose((1, 0)))
        vecs = tuple(plgpu.load(vec_smem.at[slot, r], layout=_COL) for r in range(3))
        return (s_acc[...],) + vecs

      acc = plgpu.ACC((bk, block_q), jnp.float32)
      s_KC, lse_C, delta_C, c_C = pl.run_scoped(scores, acc)
      p_KC = jnp.exp2(s_KC * cols_of(c_C * (scale * LOG2E)) - cols_of(lse_C))
      if masked:
        j = plgpu.broadcasted_iota(jnp.int32, p_KC.shape, 0, layout=plgpu.Layout.WGMMA)
        r = plgpu.broadcasted_iota(jnp.int32, p_KC.shape, 1, layout=plgpu.Layout.WGMMA)
        p_KC = jnp.where(j + key0 <= r + qb * block_q, p_KC, 0.0)
      plgpu.barrier_wait(do_ready.at[slot])

      def dp_and_dv(dp_acc):
        plgpu.wgmma(dp_acc, v_smem, do_smem.at[slot].transpose((1, 0)))
        plgpu.wgmma(dv_acc, p_KC.astype(dtype), do_smem.at[slot])
        return plgpu.wgmma_accumulator_load(dp_acc, wait_n=1)   # P^T.dO keeps running

      dp_KC = pl.run_scoped(dp_and_dv, acc)
      ds_KC = p_KC * (dp_KC - cols_of(delta_C)) * cols_of(c_C)
      plgpu.wgmma(dk_acc, ds_KC.astype(dtype), q_smem.at[slot])
      plgpu.wgmma_wait(1)
      plgpu.barrier_arrive(do_free.at[slot])
      plgpu.wgmma_wait(0)
      plgpu.barrier_arrive(q_free.at[slot])

    def accumulate(dk_acc, dv_acc):
      def one_head(g):
        i0 = g * per_head
        body = lambda n, masked: step(i0 + n, first + n, dk_acc, dv_acc, masked)
        for n in range(n_masked):
          body(n, True)
        pl.loop(n_masked, per_head)(lambda n: body(n, False))

      if group == 1:
        one_head(0)
      else:
        pl.loop(0, group)(one_head)
      return dk_acc[...], dv_acc[...]

    acc = plgpu.ACC(k_smem.shape, jnp.float32)
    dk_KH, dv_KH = pl.run_scoped(accumulate, acc, acc)
    k_smem[...] = (dk_KH * scale).astype(dtype)
    v_smem[...] = dv_KH.astype(dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(k_smem, dk_ref.at[keys], commit_group=False)
    plgpu.copy_smem_to_gmem(v_smem, dv_ref.at[keys])
    plgpu.wait_smem_to_gmem(0)

  @pl.when(wg == 2)
  def _stream_q():
    plgpu.set_max_registers(24, action="decrease")

    def fetch(i, slot, wait):
      g, n = lax.div(i, per_head), lax.rem(i, per_head)
      h = kv_head * group + g
      q0 = (first + n) * block_q
      rows = (b, pl.ds(q0, block_q), h)
      if wait:
        plgpu.barrier_wait(q_free.at[slot])
      plgpu.copy_gmem_to_smem(q_ref.at[rows], q_smem.at[slot], q_ready.at[slot])
      plgpu.copy_gmem_to_smem(vec_ref.at[b, h, :, pl.ds(q0, block_q)], vec_smem.at[slot],
                              q_ready.at[slot])
      if wait:
        plgpu.barrier_wait(do_free.at[slot])
      plgpu.copy_gmem_to_smem(do_ref.at[rows], do_smem.at[slot], do_ready.at[slot])

    for i in range(stages):
      pl.when(i < steps)(functools.partial(fetch, jnp.int32(i), i, False))

    @pl.loop(stages, steps)
    def _(i):
      fetch(i, lax.rem(i, jnp.int32(stages)), True)


def _backward(q, k, v, c_BTN, o, lse, do, *, scale, causal, tiles):
  """(dq, dk, dv, dc) on the Hopper path; lse [B,N,T] in base-2 units from _forward."""
  B, T, N, H = q.shape
  K = k.shape[2]
  G = N // K
  bq = _ROWS_PER_WG
  for name in ("dq_block_kv", "dkv_block_q"):
    blk = getattr(tiles, name)
    if (2 * bq) % blk or blk % 64:
      raise ValueError(f"tiles.{name}={blk} must be 64 or 128 (a multiple of 64 dividing the "
                       f"{2 * bq}-row blocks).")
  # Written as a reduction so that XLA fuses it (an einsum here measured ~0.4 ms at 16384).
  delta_BTN = (o.astype(jnp.float32) * do.astype(jnp.float32)).sum(-1)
  # One TMA copy brings the three per-query vectors of a tile (rows contiguous).
  vec_BN3T = jnp.stack([lse, jnp.transpose(delta_BTN, (0, 2, 1)),
                        jnp.transpose(c_BTN.astype(jnp.float32), (0, 2, 1))], axis=2)
  swizzled = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
  common = dict(compiler_params=plgpu.CompilerParams(approx_math=True), num_threads=3,
                thread_name="wg", grid_names=("h", "t", "b"))

  def launch(kernel, scratch, out_type, grid):
    # Both kernels take (q, k, v, do, vec) and their outputs, then their scratch buffers.
    def entry(*refs):
      pl.run_scoped(lambda *bufs: kernel(*refs, *bufs), *scratch, collective_axes="wg")
    entry.__name__ = kernel.func.__name__.strip("_")  # names the kernel in profiles
    return plgpu.kernel(entry, out_type=out_type, grid=grid, **common)(q, k, v, do, vec_BN3T)

  n_q_tiles = T // (2 * bq)
  blk, stages = tiles.dq_block_kv, tiles.dq_stages
  dq, dc_BNT = launch(
      functools.partial(_dq_kernel, scale=scale, causal=causal, block_kv=blk, stages=stages,
                        n_tiles=n_q_tiles, group=G),
      scratch=(
          (plgpu.SMEM((2, bq, H), q.dtype, transforms=swizzled),
           plgpu.SMEM((2, bq, H), q.dtype, transforms=swizzled),
           plgpu.SMEM((2, 3, bq), jnp.float32),
           plgpu.SMEM((stages, blk, H), k.dtype, transforms=swizzled),
           plgpu.SMEM((stages, blk, H), v.dtype, transforms=swizzled)),
          (plgpu.Barrier(num_barriers=stages), plgpu.Barrier(num_barriers=stages),
           plgpu.Barrier(num_arrivals=3, num_barriers=2)),
          (plgpu.Barrier(num_arrivals=2, num_barriers=stages),) * 2),
      out_type=(jax.ShapeDtypeStruct(q.shape, q.dtype),
                jax.ShapeDtypeStruct((B, N, T), jnp.float32)),
      grid=(N, n_q_tiles, B))

  n_k_tiles = T // (2 * bq)
  blk, stages = tiles.dkv_block_q, tiles.dkv_stages
  dk, dv = launch(
      functools.partial(_dkv_kernel, scale=scale, causal=causal, block_q=blk, stages=stages,
                        group=G),
      scratch=(
          (plgpu.SMEM((2, bq, H), k.dtype, transforms=swizzled),
           plgpu.SMEM((2, bq, H), v.dtype, transforms=swizzled),
           plgpu.SMEM((stages, blk, H), q.dtype, transforms=swizzled),
           plgpu.SMEM((stages, blk, H), q.dtype, transforms=swizzled),
           plgpu.SMEM((stages, 3, blk), jnp.float32)),
          (plgpu.Barrier(num_arrivals=2, num_barriers=2),
           plgpu.Barrier(num_arrivals=2, num_barriers=stages),
           plgpu.Barrier(num_barriers=stages)),
          (plgpu.Barrier(num_arrivals=2, num_barriers=stages),) * 2),
      out_type=(jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)),
      grid=(K, n_k_tiles, B))
  return dq, dk, dv, jnp.transpose(dc_BNT, (0, 2, 1))


def _flash_bwd(scale, causal, tiles, res, do):
  q, k, v, c, o, lse = res
  dq, dk, dv, dc = _backward(q, k, v, c, o, lse, do, scale=scale, causal=causal, tiles=tiles)
  return dq, dk, dv, dc.astype(c.dtype)


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q_BTNH, k_BSKH, v_BSKH, c_BTN, q_pos_BT, q_seg_BT, kv_seg_BS, kv_len_B, *,
                    scale, causal, window, block_q=None, block_k=None, interpret=False,
                    tiles=None):
  """The kernel contract of ssmax_jax.kernels; Hopper path where supported, else triton_gpu.

  block_q is fixed at 128 rows (two warpgroups of 64) on the Hopper path; block_k sets its
  forward key tile (tiles=, a Tiles, sets the forward's and the backward kernels' tiles and
  pipeline depths together).
  """
  if (q_seg_BT is None) != (kv_seg_BS is None):
    raise ValueError("q_seg_BT and kv_seg_BS must both be given or both be None.")
  H = q_BTNH.shape[-1]
  if tiles is None:
    tiles = default_tiles(H)
    if block_k is not None:
      tiles = Tiles(block_k, tiles.stages)
  reason = unsupported_reason(q_BTNH, k_BSKH, q_pos_BT, q_seg_BT, kv_len_B, window, tiles,
                              interpret)
  if reason is not None:
    return triton_gpu.flash_attention(
        q_BTNH, k_BSKH, v_BSKH, c_BTN, q_pos_BT, q_seg_BT, kv_seg_BS, kv_len_B, scale=scale,
        causal=causal, window=window, block_q=block_q, block_k=block_k, interpret=interpret)
  return _flash(q_BTNH, k_BSKH, v_BSKH, c_BTN.astype(jnp.float32), float(scale), bool(causal),
                tiles)
