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

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ssmax_jax.ops import _dispatch
from ssmax_jax.ops.attention import context_parallel, masks, variants
from ssmax_jax.ops.attention.masks import is_traced

IMPLEMENTATIONS = ("xla", "cudnn", "pallas")
"""The backend names `dot_product_attention(implementation=...)` takes (None or 'auto' too)."""
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
  """Ranks, shapes and the dtype policy: q, k, v floating and of one dtype."""
  for name, x in (("query", query), ("key", key), ("value", value)):
    if jnp.ndim(x) != 4:
      raise ValueError(f"{name} has shape {jnp.shape(x)}; expected rank 4 "
                       f"({'[B,T,N,H]' if name == 'query' else '[B,S,K,H]'}).")
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(f"{name} has dtype {dtype}; attention takes floating inputs (bfloat16, "
                       f"float16, float32, or float64 with x64 enabled): cast it, e.g. "
                       f"{name}.astype(jnp.float32).")
  if not jnp.result_type(query) == jnp.result_type(key) == jnp.result_type(value):
    raise ValueError(f"query, key and value have dtypes {jnp.result_type(query)}, "
                     f"{jnp.result_type(key)}, {jnp.result_type(value)}; they must share one: "
                     "cast them to the same dtype.")
  B, T, N, H = query.shape
  if key.shape != value.shape:
    raise ValueError(f"key {key.shape} and value {value.shape} must have the same shape [B,S,K,H].")
  if key.shape[0] != B:
    raise ValueError(f"key/value batch {key.shape[0]} != query batch {B}; they must match.")
  if key.shape[3] != H:
    raise ValueError(f"key/value head dim {key.shape[3]} != query head dim {H}; they must match.")
  if key.shape[2] == 0:
    raise ValueError("key/value have 0 heads; they need K >= 1 (and N % K == 0).")
  if N % key.shape[2]:
    raise ValueError(f"query has {N} heads and key/value {key.shape[2]}: N % K must be 0 (GQA).")


def _check_real(name, x):
  """x must be real numbers (float or int), not bool, complex or anything else."""
  if x is None:
    return None
  dtype = jnp.result_type(x) if is_traced(x) or hasattr(x, "dtype") else np.asarray(x).dtype
  if dtype == bool or not (jnp.issubdtype(dtype, jnp.floating)
                           or jnp.issubdtype(dtype, jnp.integer)):
    raise ValueError(f"{name} has dtype {dtype}; it must hold real numbers (a float or int "
                     "array or scalar).")
  return x


def _check_scale(scale, head_dim):
  """(static float scale, traced scale or None): a traced scale rides on the multiplier c."""
  if scale is None:
    return 1.0 / math.sqrt(head_dim) if head_dim else 1.0, None
  _check_real("scale", scale)
  if jnp.ndim(scale) != 0:
    raise ValueError(f"scale has shape {jnp.shape(scale)}; it must be a scalar.")
  if is_traced(scale):
    return 1.0, scale
  value = float(np.asarray(scale))
  if not math.isfinite(value):
    raise ValueError(f"scale={value}; it must be a finite number (None: 1/sqrt(head dim)).")
  return value, None


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


def _check_ranks(query, key, value) -> bool:
  """True for unbatched [T,N,H] / [S,K,H] inputs, False for batched rank-4 ones."""
  ranks = tuple(jnp.ndim(x) for x in (query, key, value))
  if ranks == (3, 3, 3):
    return True
  if ranks != (4, 4, 4) and len(set(ranks)) != 1:
    raise ValueError(f"query, key and value have ranks {ranks}; pass all batched ([B,T,N,H], "
                     "[B,S,K,H]) or all unbatched ([T,N,H], [S,K,H]).")
  return False


def _unbatched_bcast(name, x):
  """bias or mask of an unbatched call: broadcastable to [N,T,S], given a batch axis of 1."""
  if x is None:
    return None
  if jnp.ndim(x) > 3:
    raise ValueError(f"{name} has shape {jnp.shape(x)}; with unbatched query [T,N,H] it must "
                     "be broadcastable to [N,T,S] (rank 3 at most).")
  x = jnp.asarray(x)
  return x.reshape((1,) * (4 - x.ndim) + x.shape)


def _unbatched_length(name, x):
  """A sequence length of an unbatched call: a scalar, made [1]."""
  if x is None:
    return None
  if jnp.ndim(x) != 0:
    raise ValueError(f"{name} has shape {jnp.shape(x)}; with unbatched query [T,N,H] it must "
                     "be a scalar.")
  return (jnp if is_traced(x) or isinstance(x, jax.Array) else np).reshape(x, (1,))


def _choose_residual(implementation):
  """The backend of a return_residual call: XLA computes the log-sum-exp (docs/variants.md)."""
  implementation = _dispatch.normalize("attention", implementation, IMPLEMENTATIONS)
  if implementation not in (None, "xla"):
    raise ValueError(f"return_residual=True runs on implementation='xla' only, not "
                     f"{implementation!r}: pass implementation=None or 'xla'.")
  return "xla"


def _attention_batched(query, key, value, bias, mask, *, s, b, logit_multiplier, scale,
                       is_causal, segment_ids, query_positions, local_window_size,
                       query_seq_lengths, key_value_seq_lengths, implementation,
                       return_residual, context_axis_name):
  """dot_product_attention on [B,T,N,H] queries (every argument batched)."""
  _check_qkv(query, key, value)
  query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
  if context_axis_name is not None or context_parallel.context_shards() > 1:
    if return_residual:
      raise ValueError("return_residual=True is not available with the sequence sharded over "
                       "a context axis: call without it, or unsharded.")
    return context_parallel.attention(
        query, key, value, bias, mask, context_axis_name=context_axis_name,
        query_positions=query_positions, segment_ids=segment_ids,
        query_seq_lengths=query_seq_lengths, key_value_seq_lengths=key_value_seq_lengths, s=s,
        b=b, logit_multiplier=logit_multiplier, run=dot_product_attention, scale=scale,
        is_causal=is_causal, local_window_size=local_window_size,
        implementation=implementation)
  B, T, N, H = query.shape
  S = key.shape[1]
  spec = masks.make_mask_spec(
      query.shape, key.shape, mask, is_causal=is_causal, segment_ids=segment_ids,
      query_positions=query_positions, local_window_size=local_window_size,
      query_seq_lengths=query_seq_lengths, key_value_seq_lengths=key_value_seq_lengths,
      num_heads=N)
  if bias is not None:
    bias = jnp.asarray(_check_real("bias", bias))
    try:
      jnp.broadcast_shapes(bias.shape, (B, N, T, S))
    except ValueError:
      raise ValueError(f"bias has shape {bias.shape}, not broadcastable to [B,N,T,S]="
                       f"{[B, N, T, S]}.") from None
  for name, x in (("s", s), ("b", b), ("logit_multiplier", logit_multiplier)):
    _check_real(name, x)
  _check_c_args(s, b, logit_multiplier)
  scale, traced_scale = _check_scale(scale, H)
  if query.size == 0 or S == 0:
    # Nothing to attend (or nobody asking): zeros of the right shape, as for a query with no
    # key; the multiplier arguments are still checked against the shapes.
    _multiplier(spec, N, s, b, logit_multiplier, jnp.zeros((B, T), jnp.int32))
    _dispatch.normalize("attention", implementation, IMPLEMENTATIONS)
    out = jnp.zeros(query.shape, query.dtype)
    return (out, jnp.full((B, T, N), -jnp.inf, jnp.float32)) if return_residual else out
  default_positions = query_positions is None
  impl = _choose_residual(implementation) if return_residual else _choose(
      implementation, query, key, spec, bias, default_positions)
  # n serves s (and b) and cuDNN's zeroing of empty rows: counted once, only if needed.
  zeroes_empty_rows = impl == "cudnn" and not masks.every_query_attends(spec)
  n = masks.counts_from_spec(spec) if (s is not None or zeroes_empty_rows) else None
  c = _multiplier(spec, N, s, b, logit_multiplier, n)
  if traced_scale is not None:  # the backends take scale as a Python float; c is an array
    c = ((jnp.ones((B, T, N), jnp.float32) if c is None else c) * traced_scale).astype(
        jnp.float32)
  if spec.q_valid_B is not None:
    # Rows past the query lengths are dropped: zero them on the way in too, so that whatever
    # they hold (NaN included) reaches no gradient of k or v.
    valid_BT = jnp.arange(T)[None, :] < spec.q_valid_B[:, None]
    query = jnp.where(valid_BT[:, :, None, None], query, 0).astype(query.dtype)
    if c is not None:
      c = jnp.where(valid_BT[:, :, None], c, 0)
  if return_residual:
    out, lse_BTN = _BACKENDS["xla"].attention_xla(query, key, value, c, spec, scale=scale,
                                                  bias=bias, return_residual=True)
    lse_BTN = jax.lax.stop_gradient(lse_BTN)
  else:
    out = _run(impl, query, key, value, c, spec, scale=scale, bias=bias, n=n,
               default_positions=default_positions)
  if spec.q_valid_B is not None:
    out = jnp.where(valid_BT[:, :, None, None], out, 0).astype(out.dtype)
    if return_residual:  # a row past its length attends no key
      lse_BTN = jnp.where(valid_BT[:, :, None], lse_BTN, -jnp.inf)
  return (out, lse_BTN) if return_residual else out


def dot_product_attention(
    query: jax.Array, key: jax.Array, value: jax.Array, bias: ArrayLike | None = None,
    mask: ArrayLike | None = None, *, s: ArrayLike | None = None, b: ArrayLike | None = None,
    logit_multiplier: ArrayLike | None = None, scale: float | None = None,
    is_causal: bool = False,
    segment_ids: ArrayLike | tuple[ArrayLike, ArrayLike] | None = None,
    query_positions: ArrayLike | None = None,
    local_window_size: int | tuple[int, int] | None = None,
    query_seq_lengths: ArrayLike | None = None, key_value_seq_lengths: ArrayLike | None = None,
    implementation: str | None = None, return_residual: bool = False,
    context_axis_name: str | None = None) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Scaled dot-product attention whose logits for query i are multiplied by c_i.

  A drop-in for `jax.nn.dot_product_attention`. The logit of query i and key j is
  c_i * scale * <q_i, k_j> (+ bias), softmaxed over the keys query i attends. c comes from
  one of: `s` (and `b`): c = s*log(n) (+ b), with n the number of keys query i attends after
  every mask (SSMax); `logit_multiplier`: c given directly (any variant, see
  `logit_multiplier`); none of them: c = 1, plain softmax, equal to
  `jax.nn.dot_product_attention` except that a query attending no key returns zeros.
  All masks combine (a key is attended only if every one allows it).

  Unbatched inputs (query [T,N,H], key and value [S,K,H], as `jax.nn` takes them, e.g. under
  `jax.vmap`) drop B from every per-batch argument: segment_ids [T] (or a ([T], [S]) pair),
  query_positions [T], the seq lengths scalars, logit_multiplier [T,N], bias and mask
  broadcastable to [N,T,S]; the output is then [T,N,H] (the residual [T,N]).

  Args:
    query: [B,T,N,H] queries (or [T,N,H], see above).
    key: [B,S,K,H] keys; N % K == 0 (GQA: query head h reads kv head h // (N // K)).
    value: [B,S,K,H] values, the shape of `key`.
    bias: added to the logits after c, broadcastable to [B,N,T,S]; does not change n.
    mask: boolean, broadcastable to [B,N,T,S]; True attends.
    s: SSMax's scale, a scalar or [N] (one per query head).
    b: the bias of c = s*log(n) + b (the paper's variant (d)), a scalar or [N]; needs `s`.
    logit_multiplier: c as float32 [B,T,N] (or [B,T,1]); exclusive with `s` and `b`.
    scale: multiplies the logits; None is 1/sqrt(H). A finite number, or a traced scalar
      (then applied through c).
    is_causal: query i attends keys at positions <= its query position.
    segment_ids: [B,T] ids (self-attention, S == T), or a ([B,T], [B,S]) pair of query and
      key ids; a query attends only keys with its id (packed documents).
    query_positions: [B,T] or [T] int positions of the queries for `is_causal` and
      `local_window_size` (default 0..T-1; keys are at 0..S-1), e.g. for KV-cache decoding.
    local_window_size: (left, right) non-negative ints, or an int for both (static Python
      or NumPy ints; sides past 2**30 are clamped): query at position p attends keys
      in [p - left, p + right].
    query_seq_lengths: [B] ints; rows at or past each length are returned as zeros.
    key_value_seq_lengths: [B] ints; keys at or past each length are not attended (padding).
    implementation: None (or 'auto'): the fastest backend for the platform and arguments;
      'xla', 'cudnn' or 'pallas' insist on that backend (ValueError if it cannot take the call).
    return_residual: also return the log-sum-exp of the final logits (computed by 'xla').
    context_axis_name: inside a shard_map that splits the sequence over this axis: q/k/v are
      this device's tokens, in any order, and `query_positions` their global positions
      (required). Under jit with a mesh whose 'context' axis is > 1 the op shards by itself.
      Either way (self-attention, S == T) key j sits at query j's position; see
      docs/scaling.md.

  Returns:
    [B,T,N,H] in query's dtype; with return_residual, (that, residual), the residual being the
    natural-log log-sum-exp over the attended keys of the final logits (scaled, times c,
    biased, masked), float32 [B,T,N] (jax.nn returns it in the input dtype; float32 keeps it
    exact for merging partial attentions), -inf for a query that attends no key, under
    lax.stop_gradient.

  Raises:
    ValueError: on any inconsistent shape, dtype or argument, before any compute.
  """

  unbatched = _check_ranks(query, key, value)
  if unbatched:
    batch = lambda x: None if x is None else jnp.asarray(x)[None]
    bias, mask = _unbatched_bcast("bias", bias), _unbatched_bcast("mask", mask)
    if isinstance(segment_ids, (tuple, list)):
      segment_ids = type(segment_ids)(batch(x) for x in segment_ids)
    else:
      segment_ids = batch(segment_ids)
    query_positions = batch(query_positions)
    query_seq_lengths, key_value_seq_lengths = (
        _unbatched_length(name, x) for name, x in (("query_seq_lengths", query_seq_lengths),
                                                   ("key_value_seq_lengths",
                                                    key_value_seq_lengths)))
    logit_multiplier = batch(logit_multiplier)
    query, key, value = batch(query), batch(key), batch(value)
  result = _attention_batched(
      query, key, value, bias, mask, s=s, b=b, logit_multiplier=logit_multiplier, scale=scale,
      is_causal=is_causal, segment_ids=segment_ids, query_positions=query_positions,
      local_window_size=local_window_size, query_seq_lengths=query_seq_lengths,
      key_value_seq_lengths=key_value_seq_lengths, implementation=implementation,
      return_residual=return_residual, context_axis_name=context_axis_name)
  if not unbatched:
    return result
  return jax.tree.map(lambda x: x[0], result)


def attention_counts(
    query: jax.Array | jax.ShapeDtypeStruct, key: jax.Array | jax.ShapeDtypeStruct,
    mask: ArrayLike | None = None, *, is_causal: bool = False,
    segment_ids: ArrayLike | tuple[ArrayLike, ArrayLike] | None = None,
    query_positions: ArrayLike | None = None,
    local_window_size: int | tuple[int, int] | None = None,
    key_value_seq_lengths: ArrayLike | None = None) -> jax.Array:
  """n, the number of keys each query attends under the given masks.

  Only the shapes of `query` and `key` are read. Use n with `logit_multiplier` to compute c
  for any variant.

  Args:
    query: [B,T,...] (usually [B,T,N,H]), or an unbatched [T,N,H] with key [S,K,H] (the
      per-batch arguments then drop B, as in `dot_product_attention`); an array or a
      jax.ShapeDtypeStruct.
    key: [B,S,...] (or [S,K,H]); an array or a jax.ShapeDtypeStruct.
    mask: as in `dot_product_attention`.
    is_causal: as in `dot_product_attention`.
    segment_ids: as in `dot_product_attention`.
    query_positions: as in `dot_product_attention`.
    local_window_size: as in `dot_product_attention`.
    key_value_seq_lengths: as in `dot_product_attention`.

  Returns:
    int32 [B,T], or [B,T,N] if `mask` varies by head ([T] or [T,N] unbatched).
  """
  if len(jnp.shape(query)) == 3 and len(jnp.shape(key)) == 3:
    batch = lambda x: None if x is None else jnp.asarray(x)[None]
    if isinstance(segment_ids, (tuple, list)):
      segment_ids = type(segment_ids)(batch(x) for x in segment_ids)
    return attention_counts(
        jax.ShapeDtypeStruct((1,) + tuple(query.shape), query.dtype),
        jax.ShapeDtypeStruct((1,) + tuple(key.shape), key.dtype),
        _unbatched_bcast("mask", mask), is_causal=is_causal,
        segment_ids=segment_ids if isinstance(segment_ids, (tuple, list)) else batch(segment_ids),
        query_positions=batch(query_positions), local_window_size=local_window_size,
        key_value_seq_lengths=_unbatched_length("key_value_seq_lengths",
                                                key_value_seq_lengths))[0]
  for name, x in (("query", query), ("key", key)):
    if len(jnp.shape(x)) < 2:
      raise ValueError(f"{name} has shape {jnp.shape(x)}; expected at least [B, length].")
  num_heads = query.shape[2] if len(query.shape) >= 3 else None
  spec = masks.make_mask_spec(
      query.shape, key.shape, mask, is_causal=is_causal, segment_ids=segment_ids,
      query_positions=query_positions, local_window_size=local_window_size,
      key_value_seq_lengths=key_value_seq_lengths, num_heads=num_heads)
  return masks.counts_from_spec(spec)
