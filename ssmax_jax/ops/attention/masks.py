"""Masking arguments: validation, the attended-key counts n, and dense masks for the XLA backend.

All masks combine by AND. Key positions are 0..S-1; query positions default to 0..T-1.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

QUERY_CHUNK = 512  # counts with segments or a dense mask are taken this many queries at a time
# Window sides and query positions stay below 2**30, so position +- window never overflows int32;
# a side this long already reaches every key of any sequence shorter than 2**30.
POSITION_LIMIT = 2 ** 30


@dataclasses.dataclass(frozen=True)
class MaskSpec:
  """Validated masking arguments in kernel form (see ssmax_jax.ops.attention)."""
  batch: int
  q_len: int
  kv_len: int
  q_pos_BT: jax.Array
  q_seg_BT: jax.Array | None
  kv_seg_BS: jax.Array | None
  kv_len_B: jax.Array | None
  q_valid_B: jax.Array | None  # query_seq_lengths
  causal: bool
  window: tuple[int, int] | None
  mask_BNTS: jax.Array | None  # dense boolean, broadcastable to [B,N,T,S]

  @property
  def only_intervals(self) -> bool:
    """True when each query attends one contiguous range of keys (n has a closed form)."""
    return self.q_seg_BT is None and self.mask_BNTS is None


def is_traced(x) -> bool:
  """True for a value only known when the computation runs (a jit/vmap/grad tracer)."""
  return isinstance(x, jax.core.Tracer)


def _static_error(name, x):
  return ValueError(
      f"{name} is a traced value ({type(x).__name__}); it must be a static Python value, known "
      f"when the call is traced: pass it as a Python constant, or mark it static "
      f"(jax.jit(..., static_argnames=...)).")


def static_bool(name, x) -> bool:
  """x as a bool: Python or NumPy bools only (a string or a number is more likely a mistake)."""
  if is_traced(x):
    raise _static_error(name, x)
  if isinstance(x, (bool, np.bool_)) or (isinstance(x, np.ndarray) and x.shape == ()
                                         and x.dtype == np.bool_):
    return bool(x)
  raise ValueError(f"{name}={x!r} ({type(x).__name__}); it must be a bool: pass True or False.")


def check_window(w) -> tuple[int, int] | None:
  """local_window_size as (left, right) Python ints, each side clamped to POSITION_LIMIT."""
  if w is None:
    return None
  if is_traced(w):
    raise _static_error("local_window_size", w)
  if isinstance(w, (np.ndarray, jax.Array)) and w.ndim <= 1:
    w = np.asarray(w).tolist()
  sides = tuple(w) if isinstance(w, (tuple, list)) else (w, w)
  fix = ("local_window_size must be an int or a pair (left, right) of non-negative ints, "
         "e.g. 3 or (3, 0)")
  if len(sides) != 2:
    raise ValueError(f"local_window_size={w!r} has {len(sides)} entries; {fix}.")
  out = []
  for side in sides:
    if is_traced(side):
      raise _static_error("local_window_size", side)
    if isinstance(side, (bool, np.bool_)) or not isinstance(side, (int, np.integer)):
      raise ValueError(f"local_window_size={w!r} has a {type(side).__name__} side; {fix}.")
    if side < 0:
      raise ValueError(f"local_window_size={w!r} has a negative side; {fix}.")
    out.append(min(int(side), POSITION_LIMIT))
  return tuple(out)


def _check_range(name, x, lo, hi, fix):
  """A concrete int array's values must lie in [lo, hi); traced values cannot be checked."""
  if is_traced(x) or x.size == 0:
    return
  xn = np.asarray(x)
  if xn.min() < lo or (hi is not None and xn.max() >= hi):
    bound = f"[{lo}, {hi})" if hi is not None else f">= {lo}"
    raise ValueError(f"{name} has values in [{xn.min()}, {xn.max()}]; they must be {bound}. "
                     f"{fix}")


def _int_array(name, x, shape, fix, lo=None, hi=None):
  if is_traced(x) or isinstance(x, jax.Array):
    x = jnp.asarray(x)
  else:
    x = np.asarray(x)  # checked on the host: no device round trip for concrete inputs
  if not jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == bool:
    raise ValueError(f"{name} has dtype {x.dtype}; it must be an integer array. {fix}")
  if x.shape != shape:
    raise ValueError(f"{name} has shape {x.shape}; expected {shape}. {fix}")
  if lo is not None:
    _check_range(name, x, lo, hi, fix)
    if isinstance(x, np.ndarray) and hi is None:  # a length past int32 means "all of them"
      x = np.minimum(x, np.iinfo(np.int32).max)
  return jnp.asarray(x).astype(jnp.int32)


def make_mask_spec(query_shape, key_shape, mask=None, *, is_causal=False, segment_ids=None,
                   query_positions=None, local_window_size=None, query_seq_lengths=None,
                   key_value_seq_lengths=None, num_heads=None) -> MaskSpec:
  """Checks every masking argument against query [B,T,...] and key [B,S,...] shapes."""
  B, T = query_shape[:2]
  S = key_shape[1]
  if key_shape[0] != B:
    raise ValueError(f"key has batch {key_shape[0]} but query has batch {B}; they must match.")

  if T > POSITION_LIMIT or S > POSITION_LIMIT:
    raise ValueError(f"T={T}, S={S}: sequences must be shorter than 2**30.")
  if query_positions is None:
    q_pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  else:
    qp = query_positions if is_traced(query_positions) else np.asarray(query_positions)
    if qp.ndim == 1:
      qp = (jnp if is_traced(qp) else np).broadcast_to(qp, (B,) + qp.shape)
    q_pos = _int_array("query_positions", qp, (B, T), "Pass [B,T] or [T] integer positions "
                       "(keys sit at 0..S-1).", lo=0, hi=POSITION_LIMIT)

  q_seg = kv_seg = None
  if segment_ids is not None:
    if isinstance(segment_ids, (tuple, list)):
      if len(segment_ids) != 2:
        raise ValueError("segment_ids must be a [B,T] array or a (query_ids [B,T], kv_ids [B,S]) pair.")
      q_seg, kv_seg = segment_ids
    else:
      if S != T:
        raise ValueError(f"segment_ids as one array needs S == T (self-attention), got T={T}, S={S};"
                         " pass a (query_ids [B,T], kv_ids [B,S]) pair.")
      q_seg = kv_seg = segment_ids
    q_seg = _int_array("segment_ids (query ids)", q_seg, (B, T), "Query ids are [B,T].")
    kv_seg = _int_array("segment_ids (kv ids)", kv_seg, (B, S), "Key/value ids are [B,S].")

  window = check_window(local_window_size)

  kv_len = q_valid = None
  if key_value_seq_lengths is not None:
    kv_len = _int_array("key_value_seq_lengths", key_value_seq_lengths, (B,),
                        "Pass one length >= 0 per batch row.", lo=0)
  if query_seq_lengths is not None:
    q_valid = _int_array("query_seq_lengths", query_seq_lengths, (B,),
                         "Pass one length >= 0 per batch row.", lo=0)

  mask_BNTS = None
  if mask is not None:
    m = jnp.asarray(mask)
    if m.dtype != jnp.bool_:
      raise ValueError(f"mask has dtype {m.dtype}; it must be boolean (True = attend).")
    if m.ndim > 4:
      raise ValueError(f"mask has rank {m.ndim}; it must be broadcastable to [B,N,T,S].")
    m = m.reshape((1,) * (4 - m.ndim) + m.shape)
    n = num_heads if num_heads is not None else m.shape[1]
    for dim, want, name in zip(m.shape, (B, n, T, S), "BNTS"):
      if dim not in (1, want):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, not broadcastable to "
                         f"[B,N,T,S]=[{B},{n},{T},{S}] (dimension {name}).")
    mask_BNTS = m

  return MaskSpec(B, T, S, q_pos, q_seg, kv_seg, kv_len, q_valid,
                  static_bool("is_causal", is_causal), window, mask_BNTS)


def allowed_BNTS(spec: MaskSpec, q_pos_BT=None, kv_idx_S=None) -> jax.Array:
  """Boolean mask [B,1 or N,T,S] of every condition (optionally for a query chunk)."""
  q_pos = spec.q_pos_BT if q_pos_BT is None else q_pos_BT
  j = jnp.arange(spec.kv_len, dtype=jnp.int32) if kv_idx_S is None else kv_idx_S
  p = q_pos[:, None, :, None]
  jj = j[None, None, None, :]
  ok = jnp.ones((spec.batch, 1, q_pos.shape[1], spec.kv_len), bool)
  if spec.causal:
    ok &= jj <= p
  if spec.window is not None:
    ok &= (jj >= p - spec.window[0]) & (jj <= p + spec.window[1])
  if spec.kv_len_B is not None:
    ok &= jj < spec.kv_len_B[:, None, None, None]
  return ok


def _segment_and_dense(spec, ok, q_seg_BT, mask_BNTS):
  if q_seg_BT is not None:
    ok = ok & (q_seg_BT[:, None, :, None] == spec.kv_seg_BS[:, None, None, :])
  if mask_BNTS is not None:
    ok = ok & mask_BNTS
  return ok


def full_allowed_BNTS(spec: MaskSpec) -> jax.Array:
  return _segment_and_dense(spec, allowed_BNTS(spec), spec.q_seg_BT, spec.mask_BNTS)


def every_query_attends(spec: MaskSpec) -> bool:
  """True when the mask's structure proves n >= 1 for every query at positions arange(T): no
  dense mask, key lengths or segments, and no window that could leave a query without its own
  position among the keys. Backends that return something else than zeros for an empty row
  then skip the pass that zeroes those rows."""
  if spec.mask_BNTS is not None or spec.kv_len_B is not None or spec.q_seg_BT is not None:
    return False
  if spec.kv_len == 0:
    return False
  if spec.window is None:  # causal: key 0 for every query; otherwise every key
    return True
  return spec.q_len <= spec.kv_len and min(spec.window) >= 0  # query i keeps key i


def counts_from_spec(spec: MaskSpec) -> jax.Array:
  """n: int32 [B,T], or [B,T,N] when a dense mask differs between heads."""
  if spec.q_len == 0 or spec.kv_len == 0:  # nothing to count (and no chunk to count it in)
    heads = 1 if spec.mask_BNTS is None else spec.mask_BNTS.shape[1]
    return jnp.zeros((spec.batch, spec.q_len) + ((heads,) if heads > 1 else ()), jnp.int32)
  if spec.only_intervals:
    p = spec.q_pos_BT
    lo = jnp.zeros_like(p)
    hi = jnp.full_like(p, spec.kv_len - 1)
    if spec.causal:
      hi = jnp.minimum(hi, p)
    if spec.window is not None:
      lo = jnp.maximum(lo, p - spec.window[0])
      hi = jnp.minimum(hi, p + spec.window[1])
    if spec.kv_len_B is not None:
      hi = jnp.minimum(hi, spec.kv_len_B[:, None] - 1)
    return jnp.maximum(hi - lo + 1, 0).astype(jnp.int32)

  # General case: count in query chunks so that memory stays O(chunk * S), never O(T * S).
  T = spec.q_len
  chunk = min(T, QUERY_CHUNK)
  num_chunks = -(-T // chunk)
  pad = num_chunks * chunk - T
  heads = 1 if spec.mask_BNTS is None else spec.mask_BNTS.shape[1]

  def pad_t(x, axis):
    if x is None or pad == 0:
      return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths)

  q_pos = pad_t(spec.q_pos_BT, 1)
  q_seg = pad_t(spec.q_seg_BT, 1)
  mask = spec.mask_BNTS
  if mask is not None and mask.shape[2] != 1:
    mask = pad_t(jnp.broadcast_to(mask, mask.shape[:2] + (T, mask.shape[3])), 2)

  def count_chunk(start):
    sl = lambda x, axis: None if x is None else jax.lax.dynamic_slice_in_dim(x, start, chunk, axis)
    m = mask if (mask is None or mask.shape[2] == 1) else sl(mask, 2)
    ok = allowed_BNTS(spec, q_pos_BT=sl(q_pos, 1))
    ok = _segment_and_dense(spec, ok, sl(q_seg, 1), m)
    ok = jnp.broadcast_to(ok, (spec.batch, heads, chunk, spec.kv_len))
    return ok.sum(-1, dtype=jnp.int32)  # [B,heads,chunk]

  n = jax.lax.map(count_chunk, jnp.arange(num_chunks, dtype=jnp.int32) * chunk)
  n = jnp.moveaxis(n, 0, 2).reshape(spec.batch, heads, num_chunks * chunk)[:, :, :T]
  return n[:, 0] if heads == 1 else jnp.moveaxis(n, 1, 2)
