"""What the tests of the per-row ops (rms_norm, rope, cross_entropy) share.

Each op's file runs one case table through its backends: 'xla' (the reference) and 'triton'
(interpret mode on CPU) on every case, and 'triton' compiled on the GPU cases (marked gpu,
skipped elsewhere); `params` builds those pytest parameters. Also: the float64 view the
tolerances are taken in, and the Triton lowering of a kernel for an H200 on any machine.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

ON_GPU = jax.default_backend() == "gpu"
INTERPRET = jax.default_backend() == "cpu"
BACKENDS = ("xla", "triton")
_GPU = (pytest.mark.gpu, pytest.mark.skipif(not ON_GPU, reason="needs a GPU"))


def params(cases, gpu_cases=()):
  """(backend, case) pytest parameters: every backend on `cases`, the kernel on `gpu_cases`."""
  out = [pytest.param(b, c, id=f"{b}-{c.name}") for c in cases for b in BACKENDS]
  return out + [pytest.param("triton", c, id=f"triton-{c.name}", marks=_GPU)
                for c in gpu_cases]


def f64(a):
  return np.asarray(jnp.asarray(a, jnp.float32), np.float64)


def h200_lowering(fn, *args) -> str:
  """The lowered text of jit(fn) at ShapeDtypeStructs `args` for an H200 (Pallas -> Triton IR,
  not compiled to PTX), traced without a GPU."""
  device = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=132, platform="gpu")
  mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
  with jax.sharding.use_abstract_mesh(mesh):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


def data_mesh(data, fsdp, tensor):
  """An abstract (data, fsdp, tensor) mesh: the ops' choice under it needs no devices."""
  return jax.sharding.AbstractMesh((data, fsdp, tensor), ("data", "fsdp", "tensor"))
