"""RoPE's transpose on the q and k gradients, stacked (ssmax_jax/kernels/rope_gpu.py), in
interpret mode: against its jnp reference and a float64 numpy formula, against the model's own
rope(inverse=True), what a caller can get wrong, the op's backend choice, and its Triton
lowering for an H200 (traced on any machine)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmax_jax import ops
from ssmax_jax.kernels import rope_gpu
from ssmax_jax.nn.layers import rope, rope_cos_sin


def _inputs(B, T, N, H, dtype, seed=0):
  k = jax.random.split(jax.random.key(seed), 3)
  g_q, g_k = (jax.random.normal(kk, (B, T, N, H)).astype(dtype) for kk in k[:2])
  positions = jax.random.randint(k[2], (B, T), 0, 4096)  # packed documents restart positions
  return g_q, g_k, positions, *rope_cos_sin(positions, 500.0, H)


def _numpy(g, cos, sin):
  g, cos, sin = (np.asarray(jnp.asarray(a, jnp.float32), np.float64) for a in (g, cos, sin))
  x1, x2 = np.split(g, 2, axis=-1)
  c, s = cos[..., None, :], sin[..., None, :]
  return np.concatenate([x1 * c + x2 * s, x2 * c - x1 * s], axis=-1)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("B,T,N,H", [(2, 16, 3, 16), (1, 32, 2, 64)])
def test_matches_reference_float64_and_the_model_rope(B, T, N, H, dtype):
  g_q, g_k, positions, cos, sin = _inputs(B, T, N, H, dtype)
  got = rope_gpu.rotate_back_stacked(g_q, g_k, cos, sin, block_rows=8, num_warps=2,
                                     interpret=True)
  ref = rope_gpu.reference_rotate_back_stacked(g_q, g_k, cos, sin)
  assert got.shape == (B, T, 2, N, H) and got.dtype == dtype
  ulp = 2.0 ** -8 if dtype == jnp.bfloat16 else 2.0 ** -20  # one rounding, relative
  f64 = lambda a: np.asarray(jnp.asarray(a, jnp.float32), np.float64)
  for slab, g in enumerate((g_q, g_k)):
    want = _numpy(g, cos, sin)
    np.testing.assert_allclose(f64(got[:, :, slab]), want, atol=ulp * np.abs(want).max())
    np.testing.assert_allclose(f64(ref[:, :, slab]), want, atol=ulp * np.abs(want).max())
    # The model's rope(inverse=True) is the same math, so the XLA path is unchanged.
    np.testing.assert_array_equal(f64(ref[:, :, slab]), f64(rope(g, positions, 500.0,
                                                                 inverse=True)))
  np.testing.assert_allclose(f64(got), f64(ref), atol=2 * ulp * np.abs(f64(ref)).max())


def test_what_a_caller_can_get_wrong():
  g_q, g_k, _, cos, sin = _inputs(2, 8, 2, 16, jnp.float32)
  call = lambda *a, **kw: rope_gpu.rotate_back_stacked(*a, interpret=True, **kw)
  with pytest.raises(ValueError, match="must both be"):
    call(g_q, g_k[:, :, :1], cos, sin)
  with pytest.raises(ValueError, match=r"must both be"):
    call(g_q, g_k.astype(jnp.bfloat16), cos, sin)
  with pytest.raises(ValueError, match=r"cos \(2, 8, 4\) and sin .* must be \[..., H/2\]"):
    call(g_q, g_k, cos[..., :4], sin)
  with pytest.raises(ValueError, match="block_rows=32"):
    call(g_q, g_k, cos, sin, block_rows=32)  # 16 rows
  g6 = jnp.zeros((2, 8, 2, 12))  # H/2 = 6: not a Triton tile
  with pytest.raises(ValueError, match="half is a power of two"):
    call(g6, g6, jnp.zeros((2, 8, 6)), jnp.zeros((2, 8, 6)), block_rows=8)
  assert not rope_gpu.supported(16, 12, 8) and rope_gpu.supported(16, 16, 8)
  with pytest.raises(ValueError, match="rope implementation='triton' is unknown"):
    ops.rotate_back_stacked(g_q, g_k, cos, sin, implementation="triton")
  with pytest.raises(ValueError, match="rope implementation 'pallas' needs"):
    ops.rotate_back_stacked(g6, g6, jnp.zeros((2, 8, 6)), jnp.zeros((2, 8, 6)),
                            implementation="pallas")


def test_op_takes_the_kernel_where_asked_and_xla_on_a_cpu():
  g_q, g_k, _, cos, sin = _inputs(2, 16, 2, 16, jnp.float32, seed=1)
  want = rope_gpu.reference_rotate_back_stacked(g_q, g_k, cos, sin)
  np.testing.assert_array_equal(ops.rotate_back_stacked(g_q, g_k, cos, sin), want)  # 'auto'
  got = ops.rotate_back_stacked(g_q, g_k, cos, sin, implementation="pallas")  # interpret mode
  np.testing.assert_allclose(got, want, atol=1e-6)
  text = jax.jit(lambda *a: ops.rotate_back_stacked(*a)).lower(g_q, g_k, cos, sin).as_text()
  assert "pallas" not in text.lower()  # 'auto' on a CPU is plain XLA


def test_lowers_to_triton_for_h200_without_a_gpu():
  """Pallas -> Triton IR at the paper's shape (not compiled to PTX)."""
  device = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=132, platform="gpu")
  mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
  g = jax.ShapeDtypeStruct((32, 1024, 12, 64), jnp.bfloat16)
  angles = jax.ShapeDtypeStruct((32, 1024, 32), jnp.float32)
  with jax.sharding.use_abstract_mesh(mesh):
    text = jax.jit(rope_gpu.rotate_back_stacked).trace(g, g, angles, angles).lower(
        lowering_platforms=("cuda",)).as_text()
  assert text.count("__gpu$xla.gpu.triton") == 1
  assert f"grid_x = {32 * 1024 // rope_gpu.BLOCK_ROWS}" in text


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
def test_compiled_on_a_gpu_matches_reference():
  """The compiled kernel at the paper's heads in bf16 (4,096 rows), through the op's 'auto'."""
  g_q, g_k, _, cos, sin = _inputs(4, 1024, 12, 64, jnp.bfloat16, seed=2)
  text = jax.jit(ops.rotate_back_stacked).lower(g_q, g_k, cos, sin).as_text()
  assert "__gpu$xla.gpu.triton" in text  # 'auto' took the kernel
  got = jax.jit(ops.rotate_back_stacked)(g_q, g_k, cos, sin)
  ref = jax.jit(rope_gpu.reference_rotate_back_stacked)(g_q, g_k, cos, sin)
  f64 = lambda a: np.asarray(jnp.asarray(a, jnp.float32), np.float64)
  np.testing.assert_allclose(f64(got), f64(ref), atol=2 ** -7 * np.abs(f64(ref)).max())
  for slab, g in enumerate((g_q, g_k)):
    want = _numpy(g, cos, sin)
    np.testing.assert_allclose(f64(got[:, :, slab]), want, atol=2 ** -8 * np.abs(want).max())
