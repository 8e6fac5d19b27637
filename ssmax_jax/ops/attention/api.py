"""The public op: SSMax (or any length-scaled) dot-product attention with backend choice.

`dot_product_attention` validates every argument, computes the multiplier c for s (and b),
asks ops/_dispatch.py for a backend, and runs it:

- implementation=None (or 'auto'): the first backend of the platform's ORDER that takes the
  call and does not skip it when choosing (`auto_skip_reason`);
- 'xla', 'cudnn': that backend, or a ValueError saying why it cannot take the call;
- 'pallas': the first of the platform's kernels (PALLAS) that takes the call.
"""
import collections.abc
import importlib
import math

import jax.numpy as jnp

from ssmax_jax.ops import _dispatch
from ssmax_jax.ops.attention import masks, variants

IMPLEMENTATIONS = ("xla", "cudnn", "pallas")
_MODULES = {"xla": "reference", "cudnn": "cudnn", "mosaic_gpu": "mosaic_gpu",
            "triton": "triton", "mosaic_tpu": "mosaic_tpu"}
# The kernels named 'pallas' on each platform, best first (CPU: Triton in interpret mode).
PALLAS = {"gpu": ("mosaic_gpu", "triton"), "tpu": ("mosaic_tpu",), "cpu": ("triton",)}
# What implementation=None tries on each platform. CPU: XLA (the kernels only interpret there).
ORDER = {"gpu": ("cudnn", "mosaic_gpu", "triton", "xla"), "tpu": ("mosaic_tpu", "xla"),
         "cpu": ("xla",)}


class _Backends(collections.abc.Mapping):
  """name -> backend module, imported when first asked for (a kernel's Pallas lowering loads
  only on the platforms that may run it)."""

  def __getitem__(self, name):
    return importlib.import_module(f"ssmax_jax.ops.attention.{_MODULES[name]}")

  def __iter__(self):
    return iter(_MODULES)

  def __len__(self):
    return len(_MODULES)


_BACKENDS = _Backends()


def _check_qkv(query, key, value):
  for name, x in (("query", query), ("key", key), ("value", value)):
    if jnp.ndim(x) != 4:
      raise ValueError(f"{name} has shape {jnp.shape(x)}; expected rank 4 "
                       f"({'[B,T,N,H]' if name == 'query' else '[B,S,K,H]'}).")
  B, T, N, H = query.shape
  if key.shape != value.shape:
    raise ValueError(f"key {key.shape} and value {value.shape} must have the same shape [B,S,K,H].")
  if key.shape[0] != B:
    raise ValueError(f"key/value batch {key.shape[0]} != query batch {B}; they must match.")
  if key.shape[3] != H:
    raise ValueError(f"key/value head dim {key.shape[3]} != query head dim {H}; they must match.")
  if N % key.shape[2]:
    raise ValueError(f"query has {N} heads and key/value {key.shape[2]}: N % K must be 0 (GQA).")


def _check_c_args(s, b, logit_multiplier):
  if b is not None and s is None:
    raise ValueError("b was given without s; b is the bias of s*log(n) + b: pass s as well.")
  if logit_multiplier is not None and (s is not None or b is not None):
    raise ValueError("logit_multiplier is exclusive with s and b: pass either the multiplier c,"
                     " or s (and b) to have it computed from n.")


def _multiplier(spec, num_heads, s, b, logit_multiplier, n):
  """c [B,T,N] float32, or None for plain softmax (arguments checked by _check_c_args)."""
  if logit_multiplier is not None:
    c = jnp.asarray(logit_multiplier, jnp.float32)
    want = (spec.batch, spec.q_len, num_heads)
    if c.ndim != 3 or c.shape[:2] != want[:2] or c.shape[2] not in (1, num_heads):
      raise ValueError(f"logit_multiplier has shape {c.shape}; expected [B,T,N]={list(want)}.")
    return jnp.broadcast_to(c, want)
  if s is None:
    return None
  variant = "ssmax" if b is None else "ssmax_bias"
  return variants.logit_multiplier(variant, n, s=s, b=b, num_heads=num_heads)


def _choose(implementation, query, key, spec, bias, default_positions):
  """The name of the backend (a key of _MODULES) that runs this call."""
  platform = _dispatch.platform()
  return _dispatch.choose(
      "attention", implementation, _BACKENDS, ORDER.get(platform, ORDER["cpu"]),
      {"pallas": PALLAS.get(platform, PALLAS["cpu"])}, names=IMPLEMENTATIONS, query=query,
      key=key, spec=spec, bias=bias, default_positions=default_positions, platform=platform)


def _run(name, q, k, v, c, spec, *, scale, bias, n, default_positions):
  backend = _BACKENDS[name]
  if name == "xla":
    return backend.attention_xla(q, k, v, c, spec, scale=scale, bias=bias)
  if name == "cudnn":
    return backend.attention_cudnn(q, k, v, c, spec, scale=scale, bias=bias, n=n)
  if c is None:
    c = jnp.ones(q.shape[:3], jnp.float32)
  # None tells the kernels that positions are arange(T), which enables their fastest paths.
  q_pos = None if default_positions else spec.q_pos_BT
  return backend.flash_attention(q, k, v, c, q_pos, spec.q_seg_BT, spec.kv_seg_BS,
                                 spec.kv_len_B, scale=scale, causal=spec.causal,
                                 window=spec.window, interpret=_dispatch.platform() == "cpu")


def dot_product_attention(query, key, value, bias=None, mask=None, *, s=None, b=None,
                          logit_multiplier=None, scale=None, is_causal=False, segment_ids=None,
                          query_positions=None, local_window_size=None, query_seq_lengths=None,
                          key_value_seq_lengths=None, implementation=None):
  """Scaled dot-product attention whose logits for query i are multiplied by c_i.

  query [B,T,N,H], key/value [B,S,K,H] (GQA when N % K == 0). c comes from one of:
  s (and b): c = s*log(n) (+ b), n = keys query i attends after every mask (SSMax);
  logit_multiplier: c given directly as float32 [B,T,N] (any variant, see `logit_multiplier`);
  none of them: c = 1, plain softmax, equal to jax.nn.dot_product_attention except that a
  query attending no key returns zeros. Masks (all combined): is_causal with query_positions
  ([B,T] or [T], default arange(T)), segment_ids ([B,T], or a ([B,T], [B,S]) pair),
  local_window_size ((left, right) or int), key_value_seq_lengths [B], dense boolean `mask`
  broadcastable to [B,N,T,S]. bias is added to the logits after c and does not change n.
  query_seq_lengths [B] zeroes the rows past each length. implementation: None (or 'auto': the
  fastest for the platform and arguments), 'xla', 'cudnn' or 'pallas'. Returns [B,T,N,H] in
  query's dtype.
  """
  _check_qkv(query, key, value)
  B, T, N, H = query.shape
  spec = masks.make_mask_spec(
      query.shape, key.shape, mask, is_causal=is_causal, segment_ids=segment_ids,
      query_positions=query_positions, local_window_size=local_window_size,
      query_seq_lengths=query_seq_lengths, key_value_seq_lengths=key_value_seq_lengths,
      num_heads=N)
  if bias is not None:
    bias = jnp.asarray(bias)
    try:
      jnp.broadcast_shapes(bias.shape, (B, N, T, key.shape[1]))
    except ValueError:
      raise ValueError(f"bias has shape {bias.shape}, not broadcastable to [B,N,T,S]="
                       f"{[B, N, T, key.shape[1]]}.") from None
  _check_c_args(s, b, logit_multiplier)
  default_positions = query_positions is None
  impl = _choose(implementation, query, key, spec, bias, default_positions)
  # n serves s (and b) and cuDNN's zeroing of empty rows: counted once, only if needed.
  zeroes_empty_rows = impl == "cudnn" and not masks.every_query_attends(spec)
  n = masks.counts_from_spec(spec) if (s is not None or zeroes_empty_rows) else None
  c = _multiplier(spec, N, s, b, logit_multiplier, n)
  scale = 1.0 / math.sqrt(H) if scale is None else float(scale)
  out = _run(impl, query, key, value, c, spec, scale=scale, bias=bias, n=n,
             default_positions=default_positions)
  if spec.q_valid_B is not None:
    valid_BT = jnp.arange(T)[None, :] < spec.q_valid_B[:, None]
    out = jnp.where(valid_BT[:, :, None, None], out, 0).astype(out.dtype)
  return out


def attention_counts(query, key, mask=None, *, is_causal=False, segment_ids=None,
                     query_positions=None, local_window_size=None, key_value_seq_lengths=None):
  """n, the number of keys each query attends: int32 [B,T] ([B,T,N] if `mask` varies by head).

  query [B,T,...] and key [B,S,...] give the shapes (arrays or jax.ShapeDtypeStruct); the
  masking arguments are those of `dot_product_attention`.
  """
  for name, x in (("query", query), ("key", key)):
    if len(jnp.shape(x)) < 2:
      raise ValueError(f"{name} has shape {jnp.shape(x)}; expected at least [B, length].")
  num_heads = query.shape[2] if len(query.shape) >= 3 else None
  spec = masks.make_mask_spec(
      query.shape, key.shape, mask, is_causal=is_causal, segment_ids=segment_ids,
      query_positions=query_positions, local_window_size=local_window_size,
      key_value_seq_lengths=key_value_seq_lengths, num_heads=num_heads)
  return masks.counts_from_spec(spec)
