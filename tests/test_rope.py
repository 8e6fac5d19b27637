"""RoPE's transpose on the q and k gradients, stacked (ssmax_jax/ops/rope): its backends on one
case table (against a float64 numpy formula; the reference against the model's own
rope(inverse=True), the kernel against the reference), what a caller can get wrong, the
backend choice, and the kernel's Triton lowering for an H200 (traced on any machine)."""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmax_jax import ops
from ssmax_jax.nn.layers import rope, rope_cos_sin
from ssmax_jax.ops import _dispatch
from ssmax_jax.ops.rope import api, triton
from ssmax_jax.ops.rope.reference import reference_rotate_back_stacked
from tests import op_backends as ob
from tests.op_backends import f64


class Case(NamedTuple):
  name: str
  shape: tuple  # B, T, N, H
  dtype: object
  small_blocks: bool = True  # 8-row blocks, 2 warps: several programs


CASES = [Case(f"{'x'.join(map(str, shape))}_{jnp.dtype(dtype).name}", shape, dtype)
         for shape in [(2, 16, 3, 16), (1, 32, 2, 64)] for dtype in (jnp.float32, jnp.bfloat16)]
# The compiled kernel at the paper's heads in bf16 (4,096 rows), with its default tiles.
GPU_CASES = [Case("paper_bf16", (4, 1024, 12, 64), jnp.bfloat16, small_blocks=False)]


def _inputs(B, T, N, H, dtype, seed=0):
  k = jax.random.split(jax.random.key(seed), 3)
  g_q, g_k = (jax.random.normal(kk, (B, T, N, H)).astype(dtype) for kk in k[:2])
  positions = jax.random.randint(k[2], (B, T), 0, 4096)  # packed documents restart positions
  return g_q, g_k, positions, *rope_cos_sin(positions, 500.0, H)


def _numpy(g, cos, sin):
  g, cos, sin = (f64(a) for a in (g, cos, sin))
  x1, x2 = np.split(g, 2, axis=-1)
  c, s = cos[..., None, :], sin[..., None, :]
  return np.concatenate([x1 * c + x2 * s, x2 * c - x1 * s], axis=-1)


def _backend(name, small_blocks=True):
  if name == "xla":
    return reference_rotate_back_stacked
  tiles = dict(block_rows=8, num_warps=2) if small_blocks else {}
  return lambda *a: triton.rotate_back_stacked(*a, interpret=ob.INTERPRET, **tiles)


@pytest.mark.parametrize("backend,case", ob.params(CASES, GPU_CASES))
def test_matches_float64(backend, case):
  B, T, N, H = case.shape
  dtype = case.dtype
  g_q, g_k, positions, cos, sin = _inputs(*case.shape, dtype, seed=0 if case.small_blocks else 2)
  got = _backend(backend, case.small_blocks)(g_q, g_k, cos, sin)
  assert got.shape == (B, T, 2, N, H) and got.dtype == dtype
  ulp = 2.0 ** -8 if dtype == jnp.bfloat16 else 2.0 ** -20  # one rounding, relative
  for slab, g in enumerate((g_q, g_k)):
    want = _numpy(g, cos, sin)
    np.testing.assert_allclose(f64(got[:, :, slab]), want, atol=ulp * np.abs(want).max())
    if backend == "xla":  # the model's rope(inverse=True) is the same math: XLA's path is too
      np.testing.assert_array_equal(f64(got[:, :, slab]),
                                    f64(rope(g, positions, 500.0, inverse=True)))
  if backend == "triton":
    ref = jax.jit(reference_rotate_back_stacked)(g_q, g_k, cos, sin)
    tol = 2 * ulp if case.small_blocks else 2 ** -7
    np.testing.assert_allclose(f64(got), f64(ref), atol=tol * np.abs(f64(ref)).max())


def test_what_a_caller_can_get_wrong():
  g_q, g_k, _, cos, sin = _inputs(2, 8, 2, 16, jnp.float32)
  for implementation in ("xla", "pallas"):  # the op checks before any backend
    call = lambda *a: ops.rotate_back_stacked(*a, implementation=implementation)
    with pytest.raises(ValueError, match="must both be"):
      call(g_q, g_k[:, :, :1], cos, sin)
    with pytest.raises(ValueError, match=r"must both be"):
      call(g_q, g_k.astype(jnp.bfloat16), cos, sin)
    with pytest.raises(ValueError, match=r"cos \(2, 8, 4\) and sin .* must be \[..., H/2\]"):
      call(g_q, g_k, cos[..., :4], sin)
    with pytest.raises(ValueError, match=r"pass \[B, T, N, H\] gradients"):
      call(g_q[0], g_k[0], cos[0], sin[0])
  kernel = lambda *a, **kw: triton.rotate_back_stacked(*a, interpret=True, **kw)
  with pytest.raises(ValueError, match="block_rows=32"):
    kernel(g_q, g_k, cos, sin, block_rows=32)  # 16 rows
  g6 = jnp.zeros((2, 8, 2, 12))  # H/2 = 6: not a Triton tile
  with pytest.raises(ValueError, match="half is a power of two"):
    kernel(g6, g6, jnp.zeros((2, 8, 6)), jnp.zeros((2, 8, 6)), block_rows=8)
  assert not triton.supported(16, 12, 8) and triton.supported(16, 16, 8)


def test_choice(monkeypatch):
  shape = (2, 16, 2, 16)  # 32 rows: 2 blocks
  for impl in (None, "auto", "xla"):  # CPU: XLA unless asked for the kernel
    assert api._choose(impl, shape, None) == "xla"
  assert api._choose("pallas", shape, None) == "triton"  # interpret mode
  with pytest.raises(ValueError, match="rope implementation='triton' is unknown"):
    api._choose("triton", shape, None)
  with pytest.raises(ValueError, match="rope implementation='pallas' cannot take .*needs the "
                                       "head dimension whole .* change the batch or mesh"):
    api._choose("pallas", (2, 8, 2, 12), None)  # H/2 = 6
  monkeypatch.setattr(_dispatch, "platform", lambda: "gpu")
  assert api._choose(None, shape, None) == "triton"
  assert api._choose(None, (2, 15, 2, 16), None) == "xla"  # 30 rows: not whole blocks
  P = jax.sharding.PartitionSpec
  with jax.sharding.use_abstract_mesh(ob.data_mesh(2, 1, 2)):
    assert api._choose(None, shape, P("data", None, "tensor", None)) == "triton"  # 16 rows
    assert api._choose(None, shape, P(("data", "tensor"), None, None, None)) == "xla"  # 8
    assert api._choose(None, shape, P("data", None, None, "tensor")) == "xla"  # H split
  monkeypatch.setattr(_dispatch, "platform", lambda: "tpu")
  assert api._choose(None, shape, None) == "xla"
  with pytest.raises(ValueError, match="rope implementation='pallas' has no backend on tpu"):
    api._choose("pallas", shape, None)


def test_op_runs_the_chosen_backend():
  g_q, g_k, _, cos, sin = _inputs(2, 16, 2, 16, jnp.float32, seed=1)
  want = reference_rotate_back_stacked(g_q, g_k, cos, sin)
  np.testing.assert_array_equal(ops.rotate_back_stacked(g_q, g_k, cos, sin), want)  # None
  got = ops.rotate_back_stacked(g_q, g_k, cos, sin, implementation="pallas")  # interpret mode
  np.testing.assert_allclose(got, want, atol=1e-6)
  text = jax.jit(lambda *a: ops.rotate_back_stacked(*a)).lower(g_q, g_k, cos, sin).as_text()
  assert "pallas" not in text.lower()  # None on a CPU is plain XLA


def test_lowers_to_triton_for_h200_without_a_gpu():
  g = jax.ShapeDtypeStruct((32, 1024, 12, 64), jnp.bfloat16)
  angles = jax.ShapeDtypeStruct((32, 1024, 32), jnp.float32)
  text = ob.h200_lowering(triton.rotate_back_stacked, g, g, angles, angles)
  assert text.count("__gpu$xla.gpu.triton") == 1
  assert f"grid_x = {32 * 1024 // triton.BLOCK_ROWS}" in text


@pytest.mark.gpu
@pytest.mark.skipif(not ob.ON_GPU, reason="needs a GPU")
def test_the_op_takes_the_kernel_on_a_gpu():
  g_q, g_k, _, cos, sin = _inputs(4, 1024, 12, 64, jnp.bfloat16, seed=2)
  text = jax.jit(ops.rotate_back_stacked).lower(g_q, g_k, cos, sin).as_text()
  assert "__gpu$xla.gpu.triton" in text  # None took the kernel
