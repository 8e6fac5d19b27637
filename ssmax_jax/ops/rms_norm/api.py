"""The public op: residual add + RMSNorm with backend choice, on each device's rows.

`add_rms_norm` validates the arrays, asks ops/_dispatch.py for a backend (at trace time, under
the mesh of the computation), and runs it:

- implementation=None (or 'auto'): the first backend of the platform's order that takes the
  call: the kernel on a GPU where each device's rows split into its blocks and the mesh keeps
  the width whole, XLA elsewhere;
- 'xla': the jnp reference; 'pallas': the platform's kernels, or a ValueError with
  the reason they cannot take the call.
"""
import functools

import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from ssmax_jax.ops import _dispatch, _sharding
from ssmax_jax.ops.rms_norm import reference, triton

IMPLEMENTATIONS = _dispatch.ROW_OP_IMPLEMENTATIONS


def check_implementation(implementation):
  """ValueError unless `implementation` is None, 'auto' or one of IMPLEMENTATIONS."""
  _dispatch.normalize("norm", implementation, IMPLEMENTATIONS)


def check_inputs(x, delta, scale_D):
  """ValueError for what a caller can get wrong."""
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"x has dtype {x.dtype}: pass a float array (the residual stream).")
  if x.ndim < 1:
    raise ValueError("x is a scalar: pass an array of shape [..., D].")
  D = x.shape[-1]
  if scale_D.shape != (D,):
    raise ValueError(f"scale has shape {scale_D.shape}, expected ({D},): one value per column "
                     f"of x (x has shape {x.shape}).")
  if delta is not None and delta.shape != x.shape:
    raise ValueError(f"delta has shape {delta.shape}, expected x's shape {x.shape}: pass the "
                     "branch output to add, or None to normalise x alone.")


def _choose(implementation, shape, spec):
  """The name of the backend ('triton' or 'xla') for an x of `shape` laid out by `spec`."""
  return _dispatch.choose_triton_or_xla("norm", implementation, reference, triton,
                                        shape=shape, spec=spec)


def add_rms_norm(x, delta, scale_D, *, eps, out_dtype, implementation=None, spec=None):
  """(x + delta in x's dtype, RMSNorm(x + delta) * scale in out_dtype), both x's shape [..., D].

  delta None normalises x alone (the first value is then x). The norm is computed in float32 on
  the rounded sum, as an unfused layer computes it on a bf16 residual stream. spec: x's
  PartitionSpec under the mesh in use (None: no mesh); the kernel runs on each device's rows.
  implementation: None (or 'auto'), 'xla' or 'pallas' (module doc).
  """
  check_inputs(x, delta, scale_D)
  if _choose(implementation, x.shape, spec) == "xla":
    return reference.reference_add_rms_norm(x, delta, scale_D, eps=eps, out_dtype=out_dtype)
  kernel = functools.partial(triton.add_rms_norm, eps=eps, out_dtype=out_dtype,
                             interpret=_dispatch.platform() == "cpu")
  if spec is None or all(a is None for a in spec):
    return kernel(x, delta, scale_D)
  # shard_map's transpose sums scale's gradient over the devices.
  if delta is None:
    return _sharding.on_each_device(lambda x, s: kernel(x, None, s), (spec, P()),
                                    (spec, spec))(x, scale_D)
  return _sharding.on_each_device(kernel, (spec, spec, P()), (spec, spec))(x, delta, scale_D)
