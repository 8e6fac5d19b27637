"""Flash attention for Hopper (Pallas Mosaic GPU) with the per-query multiplier c fused.

Forward: each block runs three warpgroups. Two compute warpgroups own 64 query rows each
(wgmma with the accumulator in registers) and take turns on the tensor cores through a
shared barrier, so that one does its softmax while the other multiplies; the third
warpgroup streams K and V tiles with TMA into a ring of shared-memory slots. Logits are
multiplied by c*scale*log2(e) row-wise and exponentiated in base 2, so the log-sum-exp it
saves (base 2) is the one its backward (mosaic_gpu_vjp.py) expects.

Scope (`unsupported_reason`): a Hopper GPU, bf16/f16, head dim 64 or 128, T == S and a
multiple of 128, key positions 0..S-1 with default query positions (q_pos_BT None), optional
causal mask, no window, segments or kv lengths. The op hands every other call to the next
kernel of its order.
"""
import dataclasses
import functools

import jax
from jax import lax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from ssmax_jax.ops.attention import mosaic_gpu_vjp, tuning
from ssmax_jax.ops.attention.kernel_common import LOG2E
from ssmax_jax.ops.attention.mosaic_gpu_common import ROWS_PER_WG, query_tile_row0


@dataclasses.dataclass(frozen=True)
class Settings:
  block_kv: int           # forward: keys per pipeline step
  stages: int             # forward: K/V shared-memory slots in flight
  dq_block_kv: int        # backward dq/dc kernel: keys per step
  dq_stages: int          # backward dq/dc kernel: K/V slots in flight
  dkv_block_q: int        # backward dk/dv kernel: queries per step
  dkv_stages: int         # backward dk/dv kernel: Q/dO slots in flight


def default_settings(head_dim, dtype=None) -> Settings:
  """The tuned settings (tuning.TABLE['mosaic_gpu'])."""
  del dtype
  return Settings(**tuning.lookup("mosaic_gpu", head_dim))


def _on_hopper():
  return any(name in jax.devices()[0].device_kind for name in ("H100", "H200"))


def kernel_reason(q_BTNH, k_BSKH, v_BSKH, c_BTN, q_pos_BT, q_seg_BT, kv_seg_BS, kv_len_B, *,
                  window, settings):
  """Why the Hopper kernels cannot take these kernel-contract arguments (None when they can)."""
  del v_BSKH, c_BTN
  B, T, N, H = q_BTNH.shape
  S = k_BSKH.shape[1]
  if (q_seg_BT is None) != (kv_seg_BS is None):
    return "q_seg_BT and kv_seg_BS must both be given or both be None."
  if q_BTNH.dtype not in (jnp.bfloat16, jnp.float16) or k_BSKH.dtype != q_BTNH.dtype:
    return f"dtypes {q_BTNH.dtype}, {k_BSKH.dtype}"
  if H not in (64, 128):   # the head dims tested on a Hopper GPU
    return f"head dim {H}"
  if T != S or T % (2 * ROWS_PER_WG) or any(
      S % blk for blk in (settings.block_kv, settings.dq_block_kv, settings.dkv_block_q)):
    return f"T={T}, S={S}"
  if q_pos_BT is not None or q_seg_BT is not None or kv_len_B is not None or window is not None:
    return "positions, segments, lengths or window"
  return None


def unsupported_reason(*, query, key, spec, bias, default_positions, platform):
  """Why the op cannot hand this call to the Hopper kernels (None when it can)."""
  if bias is not None or spec.mask_BNTS is not None:
    return ("no dense mask or bias (express the mask with is_causal/segment_ids/"
            "local_window_size/lengths, or use 'xla')")
  if platform != "gpu" or not _on_hopper():
    return "not a Hopper GPU"
  return kernel_reason(query, key, None, None, None if default_positions else spec.q_pos_BT,
                       spec.q_seg_BT, spec.kv_seg_BS, spec.kv_len_B, window=spec.window,
                       settings=default_settings(query.shape[-1]))


def _fwd_kernel(q_ref, k_ref, v_ref, c_ref, o_ref, lse_ref, smem, ready, free, turn, *,
                scale, causal, block_kv, stages, n_tiles, group):
  q_smem2, k_smem, v_smem, vec_smem2 = smem
  k_ready, v_ready, q_ready, c_ready = ready
  k_free, v_free = free
  bq = ROWS_PER_WG
  dtype = q_ref.dtype
  b, h, wg = lax.axis_index("b"), lax.axis_index("h"), lax.axis_index("wg")
  tile_row0 = query_tile_row0(causal, n_tiles)
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
  n_tiles = T // (2 * ROWS_PER_WG)
  c_BNT = jnp.transpose(c_BTN.astype(jnp.float32), (0, 2, 1))   # rows contiguous for TMA
  kernel = functools.partial(_fwd_kernel, scale=scale, causal=causal, block_kv=tiles.block_kv,
                             stages=tiles.stages, n_tiles=n_tiles, group=N // K)

  def entry(q_ref, k_ref, v_ref, c_ref, o_ref, lse_ref):
    swizzled = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
    smem = (
        plgpu.SMEM((2, ROWS_PER_WG, H), q.dtype, transforms=swizzled),
        plgpu.SMEM((tiles.stages, tiles.block_kv, H), k.dtype, transforms=swizzled),
        plgpu.SMEM((tiles.stages, tiles.block_kv, H), v.dtype, transforms=swizzled),
        plgpu.SMEM((2, ROWS_PER_WG), jnp.float32),
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

def _flash_bwd(scale, causal, tiles, res, do):
  q, k, v, c, o, lse = res
  dq, dk, dv, dc = mosaic_gpu_vjp.backward(q, k, v, c, o, lse, do, scale=scale, causal=causal,
                                           tiles=tiles)
  return dq, dk, dv, dc.astype(c.dtype)


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q_BTNH, k_BSKH, v_BSKH, c_BTN, q_pos_BT, q_seg_BT, kv_seg_BS, kv_len_B, *,
                    scale, causal, window, settings=None, interpret=False):
  """The kernel contract of ssmax_jax.ops.attention, on the Hopper path only.

  Query blocks are 128 rows (two warpgroups of 64); settings (default: default_settings(H))
  sets the forward's and the backward kernels' tiles and pipeline depths. A call outside the
  scope of `kernel_reason`, or interpret=True, raises a ValueError.
  """
  settings = default_settings(q_BTNH.shape[-1]) if settings is None else settings
  if interpret:
    raise ValueError("the Hopper kernels have no interpret mode; use the Triton kernels.")
  reason = kernel_reason(q_BTNH, k_BSKH, v_BSKH, c_BTN, q_pos_BT, q_seg_BT, kv_seg_BS,
                         kv_len_B, window=window, settings=settings)
  if reason is not None:
    raise ValueError(f"the Hopper kernels cannot take this call: {reason}")
  return _flash(q_BTNH, k_BSKH, v_BSKH, c_BTN.astype(jnp.float32), float(scale), bool(causal),
                settings)
