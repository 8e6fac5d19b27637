"""Logical axis names and the one table that maps them to mesh axes (data, fsdp, context,
tensor).

Parameters carry logical names in their `out_sharding` metadata; activations are constrained
with `shard`. The trainer turns names into shardings with `nnx.logical_axis_rules(RULES)`.
"""
import jax
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "context", "tensor")

RULES = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_scalars", None),  # SSMax s and b: [N] floats, replicated
    ("norm", None),
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_seq", "context"),  # the sequence, split for context parallelism
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_head_dim", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)
_RULES = dict(RULES)


def logical_to_spec(names) -> P:
  return P(*(_RULES[n] if n is not None else None for n in names))


def fit_spec(shape, spec: P, mesh_shape) -> P:
  """Drops mesh axes that the mesh lacks or that do not divide their dimension (a vocabulary
  of 257, 2 kv heads on 4 tensor shards): those dimensions are replicated instead."""
  fixed = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes_t = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
    axes_t = tuple(a for a in axes_t if a in mesh_shape)
    size = 1
    for a in axes_t:
      size *= mesh_shape[a]
    fixed.append((axes_t[0] if len(axes_t) == 1 else axes_t) if axes_t and dim % size == 0
                 else None)
  return P(*fixed)


def activation_spec(shape, names) -> P | None:
  """The PartitionSpec of an activation of `shape` with logical `names` under the mesh in use;
  None without a mesh."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return None
  return fit_spec(shape, logical_to_spec(names), mesh.shape)


def shard(x: jax.Array, names) -> jax.Array:
  """Constrains activation `x` to the mesh axes of its logical `names` when a mesh is set."""
  spec = activation_spec(x.shape, names)
  return x if spec is None else jax.lax.with_sharding_constraint(x, spec)
