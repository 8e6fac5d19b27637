"""Flash attention with a fused per-query logit multiplier, Pallas Triton lowering: any GPU,
and CPU in interpret mode. Implements the kernel contract of `ssmax_jax.ops.attention`.

Forward: one program per (q block, batch, head) streams key blocks with an online softmax in
float32 (base 2: log2(e) is folded into the row multiplier) and saves the log-sum-exp.
Backward: a dk/dv kernel (one program per key block, streaming query blocks) and a dq/dc
kernel (one program per query block, streaming key blocks), FlashAttention-2 style.

Masking is decided per (query block, key block) pair outside the kernels, from the block
ranges of positions, segments and lengths (`_bounds`): each program loops only over
the relevant blocks, and builds an element mask only on blocks that are not fully visible.
This holds for any q_pos (not only 0..T-1), at the price of a tiny XLA precompute.
"""
import dataclasses
import functools

import jax
from jax import lax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from ssmax_jax.ops.attention import tuning
from ssmax_jax.ops.attention.kernel_common import (LOG2E, block_ranges, dot_nn, dot_nt,
                                                   split_nonfinite)

_F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class Settings:
  """(block_q, block_k, num_warps, num_stages) of the forward, dq/dc and dk/dv kernels."""
  fwd: tuple[int, int, int, int]
  dq: tuple[int, int, int, int]
  dkdv: tuple[int, int, int, int]


def default_settings(head_dim, dtype=None) -> Settings:
  """The tuned settings (tuning.TABLE['triton']); dtype does not change them."""
  del dtype
  return Settings(**tuning.lookup("triton", head_dim))


# ----------------------------------------------------------------------------- block bounds


def _first_last(flag_BIJ):
  """First and one-past-last True along the last axis; (0, 0) when none is set."""
  nj = flag_BIJ.shape[-1]
  has = flag_BIJ.any(-1)
  first = jnp.argmax(flag_BIJ, -1)
  last = nj - jnp.argmax(flag_BIJ[..., ::-1], -1)
  return jnp.where(has, first, 0), jnp.where(has, last, 0), flag_BIJ.sum(-1)


def _loop_bounds(relevant, full):
  """[.., 4] int32 (lo, lo_full, hi_full, hi) along the last axis of the block-pair flags.

  Blocks outside [lo, hi) hold no attended pair; blocks in [lo_full, hi_full) are fully
  attended and need no element mask. When the full blocks are not contiguous, none is
  treated as full (always correct, only slower).
  """
  lo, hi, _ = _first_last(relevant)
  f_lo, f_hi, f_n = _first_last(full)
  contiguous = (f_n > 0) & (f_n == f_hi - f_lo)
  lo_full = jnp.where(contiguous, f_lo, lo)
  hi_full = jnp.where(contiguous, f_hi, lo)
  return jnp.stack([lo, lo_full, hi_full, hi], -1).astype(jnp.int32)


def _bounds(q_pos_BT, q_seg_BT, kv_seg_BS, kv_len_B, S, *, block_q, block_k, causal, window):
  """Loop bounds for programs over q blocks [B,nq,8] and over kv blocks [B,nk,8].

  Entries: lo, lo_full, hi_full, hi (block indices along the streamed axis), kv_len, 0, 0, 0.
  """
  B, T = q_pos_BT.shape
  nk = S // block_k
  pmin, pmax = (x[:, :, None] for x in block_ranges(q_pos_BT, block_q))   # [B,nq,1]
  j0 = (jnp.arange(nk, dtype=jnp.int32) * block_k)[None, None, :]         # [1,1,nk]
  j1 = j0 + block_k - 1
  kv_len = kv_len_B[:, None, None]
  relevant = j0 < kv_len
  full = j1 < kv_len
  if causal:
    relevant &= j0 <= pmax
    full &= j1 <= pmin
  if window is not None:
    left, right = window
    relevant &= (j1 >= pmin - left) & (j0 <= pmax + right)
    full &= (j0 >= pmax - left) & (j1 <= pmin + right)
  if q_seg_BT is not None:
    smin, smax = (x[:, :, None] for x in block_ranges(q_seg_BT, block_q))
    tmin, tmax = (x[:, None, :] for x in block_ranges(kv_seg_BS, block_k))
    relevant &= (smin <= tmax) & (tmin <= smax)
    full &= (smin == smax) & (tmin == tmax) & (smin == tmin)
  # Without causal/window/segment terms the flags would not depend on the query block yet.
  nq = T // block_q
  relevant = jnp.broadcast_to(relevant, (B, nq, nk))
  full = jnp.broadcast_to(full & relevant, (B, nq, nk))
  extra = lambda n: jnp.concatenate(
      [jnp.broadcast_to(kv_len_B[:, None, None], (B, n, 1)), jnp.zeros((B, n, 3), jnp.int32)], -1)
  by_q = _loop_bounds(relevant, full)                                    # [B,nq,4]
  by_k = _loop_bounds(relevant.swapaxes(1, 2), full.swapaxes(1, 2))      # [B,nk,4]
  return (jnp.concatenate([by_q, extra(by_q.shape[1])], -1),
          jnp.concatenate([by_k, extra(by_k.shape[1])], -1))


# ----------------------------------------------------------------------------- kernels


def _allowed(pos_R, j_C, kv_len, qseg_R, kvseg_C, *, causal, window):
  """Element mask [R,C] for query rows with positions pos_R and keys j_C."""
  ok = j_C[None, :] < kv_len
  if causal:
    ok &= j_C[None, :] <= pos_R[:, None]
  if window is not None:
    left, right = window
    ok &= (j_C[None, :] >= pos_R[:, None] - left) & (j_C[None, :] <= pos_R[:, None] + right)
  if qseg_R is not None:
    ok &= qseg_R[:, None] == kvseg_C[None, :]
  return ok


def _three_loops(bounds_ref, body, carry):
  """Masked, unmasked, masked: the blocks before, inside and after the fully visible run."""
  lo, lo_full, hi_full, hi = (bounds_ref[i] for i in range(4))
  carry = lax.fori_loop(lo, lo_full, functools.partial(body, masked=True), carry)
  carry = lax.fori_loop(lo_full, hi_full, functools.partial(body, masked=False), carry)
  return lax.fori_loop(hi_full, hi, functools.partial(body, masked=True), carry)


def _segment_refs(refs, has_seg):
  """(q_seg ref, kv_seg ref, output refs): a kernel's segment-id inputs come first when given."""
  return (refs[0], refs[1], refs[2:]) if has_seg else (None, None, refs)


def _fwd_kernel(bounds_ref, q_ref, k_ref, v_ref, c_ref, pos_ref, *refs, scale, causal, window,
                block_k, has_seg, precision):
  qseg_ref, kvseg_ref, (o_ref, lse_ref) = _segment_refs(refs, has_seg)
  qseg = qseg_ref[...] if has_seg else None
  block_q, head_dim = q_ref.shape
  q = q_ref[...]
  r = c_ref[...] * (scale * LOG2E)                          # row multiplier, base-2 units
  pos = pos_ref[...]
  kv_len = bounds_ref[4]

  def body(jb, carry, masked):
    acc, m, l = carry
    start = pl.multiple_of(jb * block_k, block_k)
    k = k_ref[pl.ds(start, block_k), :]
    v = v_ref[pl.ds(start, block_k), :]
    z = dot_nt(q, k, precision) * r[:, None]
    if masked:
      j = start + lax.broadcasted_iota(jnp.int32, (block_k,), 0)
      kvseg = kvseg_ref[pl.ds(start, block_k)] if has_seg else None
      ok = _allowed(pos, j, kv_len, qseg, kvseg, causal=causal, window=window)
      # p @ v sees clean rows of v; a bad row's NaN goes to the logits that attend it.
      v, v_bad = split_nonfinite(v)
      z = jnp.where(ok, z + v_bad[None, :], -jnp.inf)
    m_new = jnp.maximum(m, z.max(-1))
    # A row with nothing attended yet keeps m = -inf; shift it by 0 so exp2 gives 0, not NaN.
    m_ref = jnp.where(m_new == -jnp.inf, 0.0, m_new) if masked else m_new
    alpha = jnp.exp2(m - m_ref)
    p = jnp.exp2(z - m_ref[:, None])
    l = l * alpha + p.sum(-1)
    acc = acc * alpha[:, None] + dot_nn(p.astype(v.dtype), v, precision)
    return acc, m_new, l

  carry = (jnp.zeros((block_q, head_dim), _F32), jnp.full((block_q,), -jnp.inf, _F32),
           jnp.zeros((block_q,), _F32))
  acc, m, l = _three_loops(bounds_ref, body, carry)
  seen = l != 0   # a NaN row (it attends a NaN) stays NaN, not zeros
  o = acc / jnp.where(seen, l, 1.0)[:, None]
  o_ref[...] = jnp.where(seen[:, None], o, 0.0).astype(o_ref.dtype)
  # +inf for rows that attend nothing: the backward's exp2(z - lse) is then 0 everywhere.
  lse_ref[...] = jnp.where(seen, m + jnp.log2(jnp.where(seen, l, 1.0)), jnp.inf)


def _dq_kernel(bounds_ref, q_ref, k_ref, v_ref, c_ref, pos_ref, do_ref, lse_ref, delta_ref, *refs,
               scale, causal, window, block_k, has_seg, precision):
  qseg_ref, kvseg_ref, (dq_ref, dc_ref) = _segment_refs(refs, has_seg)
  qseg = qseg_ref[...] if has_seg else None
  block_q, head_dim = q_ref.shape
  q = q_ref[...]
  do = do_ref[...]
  c = c_ref[...]
  r = c * (scale * LOG2E)
  pos = pos_ref[...]
  lse = lse_ref[...]
  delta = delta_ref[...]
  kv_len = bounds_ref[4]

  def body(jb, carry, masked):
    dq, dc = carry
    start = pl.multiple_of(jb * block_k, block_k)
    k = k_ref[pl.ds(start, block_k), :]
    v = v_ref[pl.ds(start, block_k), :]
    if masked:  # dz @ k sees clean rows of k; masked pairs select 0 (dot(do, v) may be NaN)
      k, k_bad = split_nonfinite(k)
    s = dot_nt(q, k, precision)
    p = jnp.exp2(s * r[:, None] - lse[:, None])
    dz = p * (dot_nt(do, v, precision) - delta[:, None])   # d loss / d logit
    if masked:
      j = start + lax.broadcasted_iota(jnp.int32, (block_k,), 0)
      kvseg = kvseg_ref[pl.ds(start, block_k)] if has_seg else None
      ok = _allowed(pos, j, kv_len, qseg, kvseg, causal=causal, window=window)
      dz = jnp.where(ok, dz + k_bad[None, :], 0.0)
    dq = dq + dot_nn(dz.astype(k.dtype), k, precision)
    dc = dc + (dz * s).sum(-1)
    return dq, dc

  carry = (jnp.zeros((block_q, head_dim), _F32), jnp.zeros((block_q,), _F32))
  dq, dc = _three_loops(bounds_ref, body, carry)
  dq_ref[...] = (dq * (c * scale)[:, None]).astype(dq_ref.dtype)
  dc_ref[...] = dc * scale


def _dkdv_kernel(bounds_ref, q_ref, k_ref, v_ref, c_ref, pos_ref, do_ref, lse_ref, delta_ref,
                 *refs, scale, causal, window, block_q, has_seg, precision):
  qseg_ref, kvseg_ref, (dk_ref, dv_ref) = _segment_refs(refs, has_seg)
  block_k, head_dim = k_ref.shape
  k = k_ref[...]
  v = v_ref[...]
  kv_len = bounds_ref[4]
  j = pl.program_id(0) * block_k + lax.broadcasted_iota(jnp.int32, (block_k,), 0)
  kvseg = kvseg_ref[...] if has_seg else None

  def body(ib, carry, masked):
    dk, dv = carry
    start = pl.multiple_of(ib * block_q, block_q)
    rows = pl.ds(start, block_q)
    q = q_ref[rows, :]
    do = do_ref[rows, :]
    c = c_ref[rows]
    lse = lse_ref[rows]
    delta = delta_ref[rows]
    if masked:  # dzT @ q sees clean rows of q; a bad row's NaN goes to the pairs attending it
      q, q_bad = split_nonfinite(q)
    sT = dot_nt(k, q, precision)                               # [bk,bq]
    pT = jnp.exp2(sT * (c * (scale * LOG2E))[None, :] - lse[None, :])
    if masked:
      qseg = qseg_ref[rows] if has_seg else None
      ok = _allowed(pos_ref[rows], j, kv_len, qseg, kvseg, causal=causal, window=window)
      pT = jnp.where(ok.T, pT + q_bad[None, :], 0.0)
    dv = dv + dot_nn(pT.astype(do.dtype), do, precision)
    dzT = pT * (dot_nt(v, do, precision) - delta[None, :])
    if masked:  # dot(v, do) is NaN on a bad row of v, masked or not
      dzT = jnp.where(ok.T, dzT, 0.0)
    dk = dk + dot_nn((dzT * c[None, :]).astype(q.dtype), q, precision)
    return dk, dv

  carry = (jnp.zeros((block_k, head_dim), _F32), jnp.zeros((block_k, head_dim), _F32))
  dk, dv = _three_loops(bounds_ref, body, carry)
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


# ----------------------------------------------------------------------------- pallas calls


def _precision(dtype):
  # float32 inputs: IEEE dots (Triton would use TF32 by default); bf16/fp16: tensor cores.
  return lax.Precision.HIGHEST if dtype == jnp.float32 else lax.Precision.DEFAULT


def _fwd_call(q, k, v, c, q_pos, q_seg, kv_seg, kv_len, cfg):
  B, T, N, H = q.shape
  S, K = k.shape[1], k.shape[2]
  G = N // K
  bq, bk, warps, stages = cfg.settings.fwd
  nq = T // bq
  bounds_q, _ = _bounds(q_pos, q_seg, kv_seg, kv_len, S, block_q=bq, block_k=bk,
                        causal=cfg.causal, window=cfg.window)
  has_seg = q_seg is not None
  qi = lambda i: nq - 1 - i   # longest (causal) query blocks first
  in_specs = [
      pl.BlockSpec((None, None, 8), lambda i, b, h: (b, qi(i), 0)),
      pl.BlockSpec((None, bq, None, H), lambda i, b, h: (b, qi(i), h, 0)),
      pl.BlockSpec((None, S, None, H), lambda i, b, h: (b, 0, h // G, 0)),
      pl.BlockSpec((None, S, None, H), lambda i, b, h: (b, 0, h // G, 0)),
      pl.BlockSpec((None, bq, None), lambda i, b, h: (b, qi(i), h)),
      pl.BlockSpec((None, bq), lambda i, b, h: (b, qi(i))),
  ]
  args = [bounds_q, q, k, v, c, q_pos]
  if has_seg:
    in_specs += [pl.BlockSpec((None, bq), lambda i, b, h: (b, qi(i))),
                 pl.BlockSpec((None, S), lambda i, b, h: (b, 0))]
    args += [q_seg, kv_seg]
  kernel = functools.partial(_fwd_kernel, scale=cfg.scale, causal=cfg.causal, window=cfg.window,
                             block_k=bk, has_seg=has_seg, precision=_precision(q.dtype))
  return pl.pallas_call(
      kernel,
      grid=(nq, B, N),
      in_specs=in_specs,
      out_specs=[pl.BlockSpec((None, bq, None, H), lambda i, b, h: (b, qi(i), h, 0)),
                 pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, qi(i)))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((B, N, T), _F32)],
      compiler_params=plgpu.CompilerParams(num_warps=warps, num_stages=stages),
      interpret=cfg.interpret,
      name="ssmax_flash_fwd",
  )(*args)


def backward(q, k, v, c, q_pos, q_seg, kv_seg, kv_len, o, lse, do, cfg):
  """(dq, dk, dv, dc) from the forward's output and base-2 log-sum-exp lse [B,N,T].

  Shapes already padded to the blocks of cfg (a _Static).
  """
  B, T, N, H = q.shape
  S, K = k.shape[1], k.shape[2]
  G = N // K
  has_seg = q_seg is not None
  prec = _precision(q.dtype)
  delta = jnp.einsum("btnh,btnh->bnt", o.astype(_F32), do.astype(_F32))
  common = dict(scale=cfg.scale, causal=cfg.causal, window=cfg.window, has_seg=has_seg,
                precision=prec)

  # dq, dc: one program per query block.
  bq, bk, warps, stages = cfg.settings.dq
  nq = T // bq
  bounds_q, _ = _bounds(q_pos, q_seg, kv_seg, kv_len, S, block_q=bq, block_k=bk,
                        causal=cfg.causal, window=cfg.window)
  in_specs = [
      pl.BlockSpec((None, None, 8), lambda i, b, h: (b, i, 0)),
      pl.BlockSpec((None, bq, None, H), lambda i, b, h: (b, i, h, 0)),
      pl.BlockSpec((None, S, None, H), lambda i, b, h: (b, 0, h // G, 0)),
      pl.BlockSpec((None, S, None, H), lambda i, b, h: (b, 0, h // G, 0)),
      pl.BlockSpec((None, bq, None), lambda i, b, h: (b, i, h)),
      pl.BlockSpec((None, bq), lambda i, b, h: (b, i)),
      pl.BlockSpec((None, bq, None, H), lambda i, b, h: (b, i, h, 0)),
      pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, i)),
      pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, i)),
  ]
  args = [bounds_q, q, k, v, c, q_pos, do, lse, delta]
  if has_seg:
    in_specs += [pl.BlockSpec((None, bq), lambda i, b, h: (b, i)),
                 pl.BlockSpec((None, S), lambda i, b, h: (b, 0))]
    args += [q_seg, kv_seg]
  dq, dc = pl.pallas_call(
      functools.partial(_dq_kernel, block_k=bk, **common),
      grid=(nq, B, N),
      in_specs=in_specs,
      out_specs=[pl.BlockSpec((None, bq, None, H), lambda i, b, h: (b, i, h, 0)),
                 pl.BlockSpec((None, bq, None), lambda i, b, h: (b, i, h))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((B, T, N), _F32)],
      compiler_params=plgpu.CompilerParams(num_warps=warps, num_stages=stages),
      interpret=cfg.interpret,
      name="ssmax_flash_dq",
  )(*args)

  # dk, dv: one program per key block and query head; GQA groups are summed afterwards.
  bq, bk, warps, stages = cfg.settings.dkdv
  nk = S // bk
  _, bounds_k = _bounds(q_pos, q_seg, kv_seg, kv_len, S, block_q=bq, block_k=bk,
                        causal=cfg.causal, window=cfg.window)
  in_specs = [
      pl.BlockSpec((None, None, 8), lambda j, b, h: (b, j, 0)),
      pl.BlockSpec((None, T, None, H), lambda j, b, h: (b, 0, h, 0)),
      pl.BlockSpec((None, bk, None, H), lambda j, b, h: (b, j, h // G, 0)),
      pl.BlockSpec((None, bk, None, H), lambda j, b, h: (b, j, h // G, 0)),
      pl.BlockSpec((None, T, None), lambda j, b, h: (b, 0, h)),
      pl.BlockSpec((None, T), lambda j, b, h: (b, 0)),
      pl.BlockSpec((None, T, None, H), lambda j, b, h: (b, 0, h, 0)),
      pl.BlockSpec((None, None, T), lambda j, b, h: (b, h, 0)),
      pl.BlockSpec((None, None, T), lambda j, b, h: (b, h, 0)),
  ]
  args = [bounds_k, q, k, v, c, q_pos, do, lse, delta]
  if has_seg:
    in_specs += [pl.BlockSpec((None, T), lambda j, b, h: (b, 0)),
                 pl.BlockSpec((None, bk), lambda j, b, h: (b, j))]
    args += [q_seg, kv_seg]
  out_dtype = k.dtype if G == 1 else _F32
  dk, dv = pl.pallas_call(
      functools.partial(_dkdv_kernel, block_q=bq, **common),
      grid=(nk, B, N),
      in_specs=in_specs,
      out_specs=[pl.BlockSpec((None, bk, None, H), lambda j, b, h: (b, j, h, 0))] * 2,
      out_shape=[jax.ShapeDtypeStruct((B, S, N, H), out_dtype)] * 2,
      compiler_params=plgpu.CompilerParams(num_warps=warps, num_stages=stages),
      interpret=cfg.interpret,
      name="ssmax_flash_dkdv",
  )(*args)
  if G > 1:
    dk = dk.reshape(B, S, K, G, H).sum(3).astype(k.dtype)
    dv = dv.reshape(B, S, K, G, H).sum(3).astype(v.dtype)
  return dq, dk, dv, dc


@dataclasses.dataclass(frozen=True)
class _Static:
  """The static arguments of one call (hashable: a custom_vjp non-differentiable argument)."""
  scale: float
  causal: bool
  window: tuple[int, int] | None
  settings: Settings
  interpret: bool


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _flash(q, k, v, c, q_pos, q_seg, kv_seg, kv_len, cfg):
  return _fwd_call(q, k, v, c, q_pos, q_seg, kv_seg, kv_len, cfg)[0]


def _flash_fwd(q, k, v, c, q_pos, q_seg, kv_seg, kv_len, cfg):
  o, lse = _fwd_call(q, k, v, c, q_pos, q_seg, kv_seg, kv_len, cfg)
  return o, (q, k, v, c, q_pos, q_seg, kv_seg, kv_len, o, lse)


def _flash_bwd(cfg, res, do):
  q, k, v, c, q_pos, q_seg, kv_seg, kv_len, o, lse = res
  dq, dk, dv, dc = backward(q, k, v, c, q_pos, q_seg, kv_seg, kv_len, o, lse, do, cfg)
  return dq, dk, dv, dc.astype(c.dtype), None, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


# ----------------------------------------------------------------------------- entry point


def _pad_axis(x, axis, size, mode="constant"):
  if x is None or x.shape[axis] == size:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths, mode=mode)


def kernel_reason(q_BTNH, k_BSKH, v_BSKH, c_BTN, q_pos_BT, q_seg_BT, kv_seg_BS, kv_len_B, *,
                  window, settings):
  """Why these kernel-contract arguments are invalid here (None when the kernel takes them)."""
  del k_BSKH, v_BSKH, c_BTN, q_pos_BT, kv_len_B, window, settings
  if q_BTNH.dtype == jnp.float64:
    return "float64 inputs: the kernels compute in float32; use the 'xla' backend."
  if (q_seg_BT is None) != (kv_seg_BS is None):
    return "q_seg_BT and kv_seg_BS must both be given or both be None."
  return None


def unsupported_reason(*, query, key, spec, bias, default_positions, platform):
  """Why the op cannot hand this call to the Triton kernels (None when it can)."""
  del key, default_positions, platform
  if query.dtype == jnp.float64:
    return "float64 (the kernels compute in float32; 'xla' computes float64)"
  if bias is not None or spec.mask_BNTS is not None:
    return ("no dense mask or bias (express the mask with is_causal/segment_ids/"
            "local_window_size/lengths, or use 'xla')")
  return None


def auto_skip_reason(*, query, key, spec, bias, default_positions, platform):
  """Why implementation=None passes over this kernel though it could take the call."""
  del key, spec, bias, default_positions
  if platform == "gpu" and query.dtype == jnp.float32:
    return "float32 inputs on a GPU go to XLA"
  return None


def flash_attention(q_BTNH, k_BSKH, v_BSKH, c_BTN, q_pos_BT, q_seg_BT, kv_seg_BS, kv_len_B, *,
                    scale, causal, window, settings=None, interpret=False):
  """Attention with logits c*scale*q.k; see ssmax_jax.ops.attention for the contract.

  q_pos_BT None means positions 0..T-1. settings: a Settings (default: default_settings(H));
  blocks longer than a small problem are shrunk to its next power of two.
  """
  B, T, N, H = q_BTNH.shape
  S = k_BSKH.shape[1]
  settings = default_settings(H, q_BTNH.dtype) if settings is None else settings
  reason = kernel_reason(q_BTNH, k_BSKH, v_BSKH, c_BTN, q_pos_BT, q_seg_BT, kv_seg_BS,
                         kv_len_B, window=window, settings=settings)
  if reason is not None:
    raise ValueError(reason)
  if window is not None and isinstance(window, int):
    window = (window, window)
  window = None if window is None else (int(window[0]), int(window[1]))
  # Small problems: shrink tiles to the next power of two (Triton dots need >= 16).
  t_cap = max(16, pl.next_power_of_2(T))
  s_cap = max(16, pl.next_power_of_2(S))
  settings = Settings(**{name: (min(bq, t_cap), min(bk, s_cap), w, st)
                         for name, (bq, bk, w, st) in dataclasses.asdict(settings).items()})
  blocks = dataclasses.astuple(settings)
  q_mult = max(bq for bq, _, _, _ in blocks)
  k_mult = max(bk for _, bk, _, _ in blocks)
  T_pad = pl.cdiv(T, q_mult) * q_mult
  S_pad = pl.cdiv(S, k_mult) * k_mult

  if q_pos_BT is None:
    q_pos_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  q_pos_BT = q_pos_BT.astype(jnp.int32)
  kv_len_B = (jnp.full((B,), S, jnp.int32) if kv_len_B is None
              else jnp.minimum(kv_len_B.astype(jnp.int32), S))
  c_BTN = c_BTN.astype(_F32)
  # Padded query rows copy the last real row's position and segment (so block ranges do not
  # widen) and are sliced off; padded keys fall beyond kv_len.
  q, c = _pad_axis(q_BTNH, 1, T_pad), _pad_axis(c_BTN, 1, T_pad)
  q_pos = _pad_axis(q_pos_BT, 1, T_pad, "edge")
  k, v = _pad_axis(k_BSKH, 1, S_pad), _pad_axis(v_BSKH, 1, S_pad)
  q_seg = kv_seg = None
  if q_seg_BT is not None:
    q_seg = _pad_axis(q_seg_BT.astype(jnp.int32), 1, T_pad, "edge")
    kv_seg = _pad_axis(kv_seg_BS.astype(jnp.int32), 1, S_pad, "edge")
  cfg = _Static(float(scale), bool(causal), window, settings, interpret)
  o = _flash(q, k, v, c, q_pos, q_seg, kv_seg, kv_len_B, cfg)
  return o[:, :T] if T_pad != T else o
