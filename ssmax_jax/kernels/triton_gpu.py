"""Moved to ssmax_jax/ops/attention/triton.py; this path stays for one release.

The old spellings: `default_blocks` (a dict), `Config`, and flash_attention's block_q, block_k
and backward_blocks (now a `Settings`).
"""
import dataclasses

from ssmax_jax.ops.attention.triton import LOG2E, Settings, _Static, backward  # noqa: F401
from ssmax_jax.ops.attention import triton as _triton


def default_blocks(head_dim, dtype):
  """{'fwd': (block_q, block_k, num_warps, num_stages), 'dq': ..., 'dkdv': ...}."""
  return dataclasses.asdict(_triton.default_settings(head_dim, dtype))


def Config(scale, causal, window, blocks, interpret):  # noqa: N802 -- the old class name
  return _Static(float(scale), bool(causal), window, Settings(**blocks), interpret)


def settings_from_blocks(head_dim, dtype, block_q=None, block_k=None, backward_blocks=None):
  """The Settings the old keywords describe: the defaults, with the forward's block_q/block_k
  and the backward's {'dq': ..., 'dkdv': ...} replaced where given."""
  blocks = default_blocks(head_dim, dtype)
  fwd = list(blocks["fwd"])
  if block_q is not None:
    fwd[0] = block_q
  if block_k is not None:
    fwd[1] = block_k
  blocks["fwd"] = tuple(fwd)
  blocks.update(backward_blocks or {})
  return Settings(**blocks)


def flash_attention(q_BTNH, k_BSKH, v_BSKH, c_BTN, q_pos_BT, q_seg_BT, kv_seg_BS, kv_len_B, *,
                    scale, causal, window, block_q=None, block_k=None, interpret=False,
                    backward_blocks=None):
  settings = settings_from_blocks(q_BTNH.shape[-1], q_BTNH.dtype, block_q, block_k,
                                  backward_blocks)
  return _triton.flash_attention(q_BTNH, k_BSKH, v_BSKH, c_BTN, q_pos_BT, q_seg_BT, kv_seg_BS,
                                 kv_len_B, scale=scale, causal=causal, window=window,
                                 settings=settings, interpret=interpret)
