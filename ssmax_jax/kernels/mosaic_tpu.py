"""Moved to ssmax_jax/ops/attention/mosaic_tpu.py; this path stays for one release.

The old spellings: `_Config`, and flash_attention's block_q and block_k (now a `Settings`).
"""
from ssmax_jax.ops.attention import mosaic_tpu as _mosaic_tpu
from ssmax_jax.ops.attention.mosaic_tpu import Settings, _classify, _scalars  # noqa: F401
from ssmax_jax.ops.attention.mosaic_tpu import _Static as _Config  # noqa: F401


def flash_attention(q_BTNH, k_BSKH, v_BSKH, c_BTN, q_pos_BT, q_seg_BT, kv_seg_BS, kv_len_B, *,
                    scale, causal, window, block_q=None, block_k=None, interpret=False):
  return _mosaic_tpu.flash_attention(q_BTNH, k_BSKH, v_BSKH, c_BTN, q_pos_BT, q_seg_BT,
                                     kv_seg_BS, kv_len_B, scale=scale, causal=causal,
                                     window=window, settings=Settings(block_q, block_k),
                                     interpret=interpret)
