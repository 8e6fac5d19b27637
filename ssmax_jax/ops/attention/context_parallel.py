"""Attention over a sequence sharded on a context axis: each device's queries against the
whole sequence's keys and values, gathered over that axis (docs/scaling.md says why).

Self-attention only (S == T): key j is the token of query j, so it sits at that query's
position. Each device all-gathers k, v, the key segment ids and the query positions over the
axis, puts the keys in position order, and runs the unsharded op on its own queries with their
global positions; n (SSMax) is counted over the whole sequence, so it is exact. Autodiff turns
the gather into a reduce-scatter of dk and dv. Any order of the tokens over the devices works
(contiguous, zigzag, striped): the positions say where each key goes.
"""
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

CONTEXT_AXIS = "context"
"""The mesh axis that `dot_product_attention` shards the sequence over by itself under jit."""


def context_shards() -> int:
  """Size of the mesh in use's 'context' axis when it is not manual already (1: none)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or CONTEXT_AXIS not in mesh.shape or CONTEXT_AXIS in mesh.manual_axes:
    return 1
  return mesh.shape[CONTEXT_AXIS]


def _check(query, key, bias, mask, query_seq_lengths):
  if bias is not None or mask is not None:
    raise ValueError("bias and mask are dense [B,N,T,S] arrays, which a sequence sharded over "
                     "the context axis cannot take: express the mask with is_causal, "
                     "segment_ids, local_window_size or key_value_seq_lengths, or run on a "
                     "mesh whose context axis is 1.")
  if query_seq_lengths is not None:
    raise ValueError("query_seq_lengths is not taken under context sharding (rows are not in "
                     "sequence order there): mask the padded queries with segment_ids instead.")
  if key.shape[1] != query.shape[1]:
    raise ValueError(f"context sharding is for self-attention: key length {key.shape[1]} must "
                     f"equal query length {query.shape[1]} (the keys are the queries' tokens).")


def _local(query, key, value, *, axis_name, query_positions, segment_ids,
           key_value_seq_lengths, run, **kwargs):
  """The op on this device's queries against the keys gathered over `axis_name`; q/k/v,
  positions and segment ids are this device's tokens (any order, global positions)."""
  B, T = query.shape[:2]
  pos_BT = jnp.broadcast_to(jnp.asarray(query_positions, jnp.int32), (B, T))
  gather = lambda x: jax.lax.all_gather(x, axis_name, axis=1, tiled=True)
  order_BS = jnp.argsort(gather(pos_BT), axis=1)  # gathered index of the key at each position
  in_order = lambda x: jnp.take_along_axis(x, order_BS.reshape(order_BS.shape + (1,) * (
      x.ndim - 2)), axis=1)
  k_BSKH, v_BSKH = in_order(gather(key)), in_order(gather(value))
  if segment_ids is not None:
    q_seg, kv_seg = segment_ids if isinstance(segment_ids, tuple) else (segment_ids,) * 2
    q_seg = jnp.broadcast_to(jnp.asarray(q_seg), (B, T))
    kv_seg = jnp.broadcast_to(jnp.asarray(kv_seg), (B, T))
    segment_ids = (q_seg, in_order(gather(kv_seg)))
  return run(query, k_BSKH, v_BSKH, query_positions=pos_BT, segment_ids=segment_ids,
             key_value_seq_lengths=key_value_seq_lengths, **kwargs)


def _divides(mesh, axes, *sizes):
  """The subset of mesh `axes` present with size > 1, if their product divides every size."""
  axes = tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1)
  total = 1
  for a in axes:
    total *= mesh.shape[a]
  return (axes if len(axes) > 1 else axes[0]) if axes and all(s % total == 0 for s in sizes) \
      else None


def attention(query, key, value, bias, mask, *, context_axis_name, query_positions,
              segment_ids, query_seq_lengths, key_value_seq_lengths, s, b, logit_multiplier,
              run, **kwargs):
  """`run` (the unsharded op, same keywords) on a sequence sharded over the context axis:
  inside the caller's shard_map over `context_axis_name` (this device's tokens, global
  `query_positions` required), or by its own shard_map over the mesh in use's 'context' axis
  (global arrays in sequence order, unless `query_positions` says otherwise)."""
  if context_axis_name is not None:
    shards = jax.lax.axis_size(context_axis_name)
    if query_positions is None:
      raise ValueError(f"context_axis_name={context_axis_name!r} needs query_positions: the "
                       "global [B,T] or [T] positions of this device's queries.")
  else:
    shards = context_shards()
  _check(query, key, bias, mask, query_seq_lengths)
  c_kwargs = dict(s=s, b=b, logit_multiplier=logit_multiplier)
  if context_axis_name is not None:
    return _local(query, key, value, axis_name=context_axis_name,
                  query_positions=query_positions, segment_ids=segment_ids,
                  key_value_seq_lengths=key_value_seq_lengths, run=run, **c_kwargs, **kwargs)
  mesh = jax.sharding.get_abstract_mesh()
  B, T, N, _ = query.shape
  if T % shards:
    raise ValueError(f"the sequence length {T} does not split over the context axis of "
                     f"{shards} devices: make it a multiple of {shards}.")
  batch = _divides(mesh, ("data", "fsdp"), B)
  heads = _divides(mesh, ("tensor",), N, key.shape[2])
  row, tok = P(batch), P(batch, CONTEXT_AXIS)
  pos = jnp.arange(T, dtype=jnp.int32) if query_positions is None else query_positions
  pos_BT = jnp.broadcast_to(jnp.asarray(pos, jnp.int32), (B, T))
  seg = segment_ids
  if seg is not None:
    seg = tuple(jnp.broadcast_to(jnp.asarray(x), (B, T)) for x in (
        seg if isinstance(seg, tuple) else (seg, seg)))
  per_head = lambda x: None if x is None else jnp.asarray(x, jnp.float32)
  s, b = per_head(s), per_head(b)
  head_spec = lambda x: P(heads) if x.ndim == 1 and x.shape[0] > 1 else P()
  lm = None if logit_multiplier is None else jnp.asarray(logit_multiplier, jnp.float32)
  lm_spec = None if lm is None else P(batch, CONTEXT_AXIS, heads if lm.shape[2] > 1 else None)
  kv_len = key_value_seq_lengths

  def body(q, k, v, pos_BT, seg, kv_len, s, b, lm):
    return _local(q, k, v, axis_name=CONTEXT_AXIS, query_positions=pos_BT, segment_ids=seg,
                  key_value_seq_lengths=kv_len, run=run, s=s, b=b, logit_multiplier=lm,
                  **kwargs)

  qkv = P(batch, CONTEXT_AXIS, heads, None)
  args = (query, key, value, pos_BT, seg, kv_len, s, b, lm)
  specs = (qkv, qkv, qkv, tok, None if seg is None else (tok, tok),
           None if kv_len is None else row, None if s is None else head_spec(s),
           None if b is None else head_spec(b), lm_spec)
  # check_vma=False: the kernels' outputs carry no varying-axes types; autodiff then sums the
  # replicated s and b's gradients over the devices, as it should.
  return jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=qkv, check_vma=False)(*args)
