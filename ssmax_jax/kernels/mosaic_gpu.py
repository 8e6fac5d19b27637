"""Moved to ssmax_jax/ops/attention/mosaic_gpu.py (backward: mosaic_gpu_vjp.py); this path
stays for one release.

The old spellings: `Tiles` (now `Settings`), `default_tiles`, the positional
`unsupported_reason`, and a `flash_attention` that hands the calls the Hopper kernels cannot
take to the Triton kernels (the op now chooses between them).
"""
import dataclasses

import jax

from ssmax_jax.kernels import triton_gpu as _triton_gpu
from ssmax_jax.ops.attention import mosaic_gpu as _mosaic_gpu
from ssmax_jax.ops.attention.mosaic_gpu import Settings, _flash, _forward  # noqa: F401
from ssmax_jax.ops.attention.mosaic_gpu_vjp import backward as _backward  # noqa: F401


def Tiles(*fields, **named):  # noqa: N802 -- the old class name
  """Settings from the leading fields given; the rest from the tuned defaults."""
  names = [f.name for f in dataclasses.fields(Settings)]
  return dataclasses.replace(default_tiles(128), **dict(zip(names, fields)), **named)


def default_tiles(head_dim):
  return _mosaic_gpu.default_settings(head_dim)


def unsupported_reason(q_BTNH, k_BSKH, q_pos_BT, q_seg_BT, kv_len_B, window, tiles, interpret):
  """Why the Hopper path cannot take this call (None when it can)."""
  if interpret:
    return "interpret mode"
  if jax.default_backend() != "gpu" or not _mosaic_gpu._on_hopper():
    return "not a Hopper GPU"
  kv_seg_BS = q_seg_BT   # only whether segments are given matters here
  return _mosaic_gpu.kernel_reason(q_BTNH, k_BSKH, None, None, q_pos_BT, q_seg_BT, kv_seg_BS,
                                   kv_len_B, window=window, settings=tiles)


def flash_attention(q_BTNH, k_BSKH, v_BSKH, c_BTN, q_pos_BT, q_seg_BT, kv_seg_BS, kv_len_B, *,
                    scale, causal, window, block_q=None, block_k=None, interpret=False,
                    tiles=None):
  """The Hopper kernels where they apply, else the Triton kernels (forward and backward)."""
  if (q_seg_BT is None) != (kv_seg_BS is None):
    raise ValueError("q_seg_BT and kv_seg_BS must both be given or both be None.")
  if tiles is None:
    tiles = default_tiles(q_BTNH.shape[-1])
    if block_k is not None:
      tiles = Tiles(block_k, tiles.stages)
  if unsupported_reason(q_BTNH, k_BSKH, q_pos_BT, q_seg_BT, kv_len_B, window, tiles,
                        interpret) is not None:
    return _triton_gpu.flash_attention(
        q_BTNH, k_BSKH, v_BSKH, c_BTN, q_pos_BT, q_seg_BT, kv_seg_BS, kv_len_B, scale=scale,
        causal=causal, window=window, block_q=block_q, block_k=block_k, interpret=interpret)
  return _mosaic_gpu.flash_attention(q_BTNH, k_BSKH, v_BSKH, c_BTN, q_pos_BT, q_seg_BT,
                                     kv_seg_BS, kv_len_B, scale=scale, causal=causal,
                                     window=window, settings=tiles)
