"""Mesh helpers the per-row ops share: how many rows each device holds, and running a kernel on
each device's own rows."""
import jax
import numpy as np


def mesh_size(axes) -> int:
  """Devices of the mesh in use over `axes`: a PartitionSpec entry (None, a name or a tuple)."""
  axes = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
  mesh = jax.sharding.get_abstract_mesh()
  return int(np.prod([mesh.shape[a] for a in axes]))


def local_rows(shape, spec):
  """(rows per device, whether the width is whole) of an x of `shape` [..., width] laid out by
  `spec` under the mesh in use: the rows are every axis but the last."""
  rows = int(np.prod(shape[:-1]))
  if spec is None:
    return rows, True
  shards = int(np.prod([mesh_size(entry) for entry in tuple(spec)[:len(shape) - 1]]))
  width_whole = len(spec) < len(shape) or spec[len(shape) - 1] is None
  return rows // shards, width_whole


def on_each_device(kernel, in_specs, out_specs):
  """`kernel` run by shard_map on each device's blocks under the mesh in use: it keeps XLA from
  gathering the rows for a custom call. check_vma=False: a per-row kernel's outputs vary
  exactly as its inputs do."""
  return jax.shard_map(kernel, mesh=jax.sharding.get_abstract_mesh(), in_specs=in_specs,
                       out_specs=out_specs, check_vma=False)
