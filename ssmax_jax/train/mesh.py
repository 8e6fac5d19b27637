"""The device mesh (data, fsdp, context, tensor) and shardings from logical axis names.

Logical names live on the parameters (`out_sharding` metadata) and map to mesh axes through the
single table ssmax_jax.nn.partitioning.RULES.
"""
import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ssmax_jax.nn.partitioning import MESH_AXES, fit_spec, logical_to_spec


def mesh_shape(shape, num_devices: int) -> tuple[int, int, int, int]:
  """(data, fsdp, context, tensor) from 4 sizes, or from 3 meaning (data, fsdp, tensor) with
  context 1; one -1 takes the remaining devices."""
  shape = tuple(int(s) for s in shape)
  if len(shape) == 3:
    shape = (shape[0], shape[1], 1, shape[2])
  if len(shape) != 4:
    raise ValueError(f"config.mesh.shape={shape} must be 4 sizes (data, fsdp, context, tensor) "
                     "or 3 (data, fsdp, tensor).")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"config.mesh.shape={shape}: {num_devices} devices are not divisible by "
                       f"{known}; choose sizes whose product divides the device count.")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ValueError(f"config.mesh.shape={shape} uses {math.prod(shape)} devices but there are "
                     f"{num_devices}; make the product equal or put -1 on one axis.")
  return shape


def make_mesh(shape, devices=None) -> jax.sharding.Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(shape, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)


def batch_shards(mesh) -> int:
  """How many ways the batch dimension is split (data x fsdp)."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


def _variable_sharding(v, mesh):
  names = v.get_metadata().get("out_sharding")
  shape = np.shape(v.get_value())
  spec = fit_spec(shape, logical_to_spec(names), mesh.shape) if names else P()
  return v.replace(NamedSharding(mesh, spec))


def state_shardings(state, mesh):
  """An nnx.State like `state` (concrete or abstract) whose values are NamedShardings."""
  return jax.tree.map(lambda v: _variable_sharding(v, mesh), state,
                      is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh) -> NamedSharding:
  """[B,T] token arrays: rows over data x fsdp, the sequence over context."""
  return NamedSharding(mesh, P(("data", "fsdp"), "context"))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
