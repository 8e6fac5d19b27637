"""The Hopper backward (Pallas Mosaic GPU) of mosaic_gpu.py's forward: dq, dk, dv and dc.

An XLA prologue packs lse, delta = rowsum(dO*O) and c per query ([B,N,3,T], one TMA copy per
tile), then two kernels with the forward's three-warpgroup layout recompute P:
- dq/dc: 128 query rows per block (64 per compute warpgroup) stream K/V tiles;
  S = Q.K^T and dP = dO.V^T on the tensor cores, dS = P*(dP - delta) in registers,
  dq += dS.K, dc += rowsum(dS*S) (float32), both scaled once at the end.
- dk/dv: 128 keys per block stream Q/dO tiles of every query head of the key head's
  group (GQA sums stay in registers); the tiles are transposed (keys x queries) so that
  P^T and dS^T*c are wgmma A operands straight from registers: dv += P^T.dO, dk += dS^T.Q.
Causal blocks skip the tiles above the diagonal and mask only the tiles that straddle it.
"""
import functools

import jax
from jax import lax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from ssmax_jax.ops.attention.kernel_common import LOG2E
from ssmax_jax.ops.attention.mosaic_gpu_common import COL, ROW, ROWS_PER_WG, query_tile_row0


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, vec_ref, dq_ref, dc_ref, smem, ready, free, *,
               scale, causal, block_kv, stages, n_tiles, group):
  """dq and dc of 128 query rows (two compute warpgroups of 64) streaming K/V tiles."""
  q_smem2, do_smem2, vec_smem2, k_smem, v_smem = smem
  k_ready, v_ready, rows_ready = ready
  k_free, v_free = free
  bq = ROWS_PER_WG
  dtype = q_ref.dtype
  b, h, wg = lax.axis_index("b"), lax.axis_index("h"), lax.axis_index("wg")
  tile_row0 = query_tile_row0(causal, n_tiles)
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
    lse_R, delta_R, c_R = (plgpu.load(vec_smem.at[r], layout=ROW) for r in range(3))
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
      dc_R = plgpu.layout_cast(jnp.zeros((bq,), jnp.float32), ROW)
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
  bk = ROWS_PER_WG
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
        vecs = tuple(plgpu.load(vec_smem.at[slot, r], layout=COL) for r in range(3))
        return (s_acc[...],) + vecs

      acc = plgpu.ACC((bk, block_q), jnp.float32)
      s_RC, lse_C, delta_C, c_C = pl.run_scoped(scores, acc)
      p_RC = jnp.exp2(s_RC * cols_of(c_C * (scale * LOG2E)) - cols_of(lse_C))
      if masked:
        j = plgpu.broadcasted_iota(jnp.int32, p_RC.shape, 0, layout=plgpu.Layout.WGMMA)
        r = plgpu.broadcasted_iota(jnp.int32, p_RC.shape, 1, layout=plgpu.Layout.WGMMA)
        p_RC = jnp.where(j + key0 <= r + qb * block_q, p_RC, 0.0)
      plgpu.barrier_wait(do_ready.at[slot])

      def dp_and_dv(dp_acc):
        plgpu.wgmma(dp_acc, v_smem, do_smem.at[slot].transpose((1, 0)))
        plgpu.wgmma(dv_acc, p_RC.astype(dtype), do_smem.at[slot])
        return plgpu.wgmma_accumulator_load(dp_acc, wait_n=1)   # P^T.dO keeps running

      dp_RC = pl.run_scoped(dp_and_dv, acc)
      ds_RC = p_RC * (dp_RC - cols_of(delta_C)) * cols_of(c_C)
      plgpu.wgmma(dk_acc, ds_RC.astype(dtype), q_smem.at[slot])
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
    dk_RH, dv_RH = pl.run_scoped(accumulate, acc, acc)
    k_smem[...] = (dk_RH * scale).astype(dtype)
    v_smem[...] = dv_RH.astype(dtype)
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


def backward(q, k, v, c_BTN, o, lse, do, *, scale, causal, tiles):
  """(dq, dk, dv, dc) of the Hopper forward; lse [B,N,T] in base-2 units from its forward.

  tiles: the call's Settings (dq_block_kv, dq_stages, dkv_block_q, dkv_stages are read).
  """
  B, T, N, H = q.shape
  K = k.shape[2]
  G = N // K
  bq = ROWS_PER_WG
  for name in ("dq_block_kv", "dkv_block_q"):
    blk = getattr(tiles, name)
    if (2 * bq) % blk or blk % 64:
      raise ValueError(f"tiles.{name}={blk} must be 64 or 128 (a multiple of 64 dividing the "
                       f"{2 * bq}-row blocks).")
  # A reduction rather than an einsum, so that XLA fuses it with its operands' reads.
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

