"""RMSNorm with the residual add before it: the public op (backend choice, sharding).

A pre-norm transformer adds each branch's output to the residual stream and normalises the sum
for the next branch; `add_rms_norm` does both. 'pallas' runs ssmax_jax/kernels/rms_norm_gpu.py
(one kernel each way where XLA takes two to three) on each device's own rows; 'xla' is the same
math in jnp; 'auto' takes the kernel on a GPU where each device's rows split into its blocks and
the mesh keeps the width whole, and XLA elsewhere (decided at trace time).
"""
import functools

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from ssmax_jax.kernels import rms_norm_gpu

IMPLEMENTATIONS = ("auto", "xla", "pallas")


def check_implementation(implementation):
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"norm implementation={implementation!r} is unknown; choose one of "
                     f"{', '.join(map(repr, IMPLEMENTATIONS))}.")


def local_rows(shape, spec):
  """(rows per device, whether the width is whole) of an x of `shape` [..., width] laid out by
  `spec` under the mesh in use: the rows are every axis but the last."""
  rows = int(np.prod(shape[:-1]))
  if spec is None:
    return rows, True
  mesh = jax.sharding.get_abstract_mesh()
  axes = [a for entry in tuple(spec)[:len(shape) - 1] if entry is not None
          for a in (entry if isinstance(entry, tuple) else (entry,))]
  shards = int(np.prod([mesh.shape[a] for a in axes]))
  width_whole = len(spec) < len(shape) or spec[len(shape) - 1] is None
  return rows // shards, width_whole


def resolve_implementation(implementation, shape, spec=None, backend=None):
  """The backend an x of `shape` [..., D] laid out by `spec` uses; 'pallas' raises if the kernel
  cannot take it. Call it while tracing, under the mesh of the computation."""
  check_implementation(implementation)
  if implementation == "xla":
    return "xla"
  backend = jax.default_backend() if backend is None else backend
  rows, width_whole = local_rows(shape, spec)
  fits = width_whole and rms_norm_gpu.supported(rows)
  if implementation == "pallas":
    if backend == "tpu":
      raise ValueError("norm implementation 'pallas' is a GPU (Triton) kernel: use 'auto' or "
                       "'xla' on TPU.")
    if not fits:
      raise ValueError(
          f"norm implementation 'pallas' needs whole rows on each device and a multiple of "
          f"{rms_norm_gpu.BLOCK_ROWS} rows per device (here {rows} rows of width "
          f"{shape[-1]}, {'whole' if width_whole else 'split over ' + repr(spec[-1])}): change "
          "the batch or mesh, or use 'xla' or 'auto'.")
    return "pallas"
  return "pallas" if backend == "gpu" and fits else "xla"


def add_rms_norm(x, delta, scale_D, *, eps, out_dtype, implementation="auto", spec=None):
  """(x + delta in x's dtype, RMSNorm(x + delta) * scale in out_dtype), both x's shape [..., D].

  delta None normalises x alone (the first value is then x). The norm is computed in float32 on
  the rounded sum, as an unfused layer computes it on a bf16 residual stream. spec: x's
  PartitionSpec under the mesh in use (None: no mesh); the kernel runs on each device's rows.
  """
  rms_norm_gpu.check_inputs(x, delta, scale_D)
  impl = resolve_implementation(implementation, x.shape, spec)
  if impl == "xla":
    return rms_norm_gpu.reference_add_rms_norm(x, delta, scale_D, eps=eps, out_dtype=out_dtype)
  kernel = functools.partial(rms_norm_gpu.add_rms_norm, eps=eps, out_dtype=out_dtype,
                             interpret=jax.default_backend() == "cpu")
  if spec is None or all(a is None for a in spec):
    return kernel(x, delta, scale_D)
  # shard_map keeps XLA from gathering the rows for the custom call. check_vma=False: outputs
  # vary exactly as x does; shard_map's transpose sums scale's gradient over the devices.
  mesh = jax.sharding.get_abstract_mesh()
  if delta is None:
    return jax.shard_map(lambda x, s: kernel(x, None, s), mesh=mesh, in_specs=(spec, P()),
                         out_specs=(spec, spec), check_vma=False)(x, scale_D)
  return jax.shard_map(kernel, mesh=mesh, in_specs=(spec, spec, P()), out_specs=(spec, spec),
                       check_vma=False)(x, delta, scale_D)
