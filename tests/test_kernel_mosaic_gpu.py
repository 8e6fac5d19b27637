"""The Hopper (Pallas Mosaic GPU) flash-attention forward and backward, and the fallback.

On CPU: the Hopper kernels (forward, and the backward's dq/dc and dk/dv kernels) are lowered
for an abstract H200 (catches lowering errors without a GPU), and calls the Hopper path
cannot take are checked to reach triton_gpu. On a Hopper GPU (marked gpu): forward against the float64 reference, gradients against jax.grad of the
float64 dense attention of test_kernel_triton. bf16 tolerances relative to the largest
reference magnitude: 2e-2 forward, 4e-2 gradients (P is rounded to bf16 before P.V).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmax_jax.kernels import mosaic_gpu
from tests.reference_np import allowed_mask_np, attention_np
from tests.test_kernel_triton import _reference_grads

BF16_FWD_TOL, BF16_GRAD_TOL = 2e-2, 4e-2
ON_HOPPER = jax.default_backend() == "gpu" and any(
    name in jax.devices()[0].device_kind for name in ("H100", "H200"))


@pytest.mark.parametrize("head_dim,causal,tiles", [(128, True, mosaic_gpu.Tiles(128, 2)),
                                                   (64, False, mosaic_gpu.Tiles(64, 3))])
def test_lowers_for_h200_without_a_gpu(head_dim, causal, tiles):
  device = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=132, platform="gpu")
  mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
  x = jax.ShapeDtypeStruct((1, 256, 2, head_dim), jnp.bfloat16)
  c = jax.ShapeDtypeStruct((1, 256, 2), jnp.float32)
  fwd = lambda q, k, v, c: mosaic_gpu._flash(q, k, v, c, 0.1, causal, tiles)
  with jax.sharding.use_abstract_mesh(mesh):
    text = jax.jit(fwd).trace(x, x, x, c).lower(lowering_platforms=("cuda",)).as_text()
  assert "mosaic_gpu" in text


@pytest.mark.parametrize("head_dim,causal,heads,tiles", [
    (128, True, (2, 2), mosaic_gpu.Tiles(128, 2)),
    (64, False, (4, 2), mosaic_gpu.Tiles(64, 3, 128, 2, 128, 3)),
    (128, True, (4, 1), mosaic_gpu.Tiles(128, 2, 64, 3, 64, 2))])
def test_backward_lowers_for_h200_without_a_gpu(head_dim, causal, heads, tiles):
  device = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=132, platform="gpu")
  mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
  N, K = heads
  q = jax.ShapeDtypeStruct((1, 256, N, head_dim), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((1, 256, K, head_dim), jnp.bfloat16)
  c = jax.ShapeDtypeStruct((1, 256, N), jnp.float32)
  loss = lambda q, k, v, c: mosaic_gpu._flash(q, k, v, c, 0.1, causal, tiles).astype(
      jnp.float32).sum()
  grads = jax.grad(loss, argnums=(0, 1, 2, 3))
  with jax.sharding.use_abstract_mesh(mesh):
    text = jax.jit(grads).trace(q, kv, kv, c).lower(lowering_platforms=("cuda",)).as_text()
  assert text.count("mosaic_gpu") >= 3   # forward, dq/dc and dk/dv kernels
  assert "triton" not in text


def test_unsupported_calls_reach_triton():
  rng = np.random.default_rng(0)
  q, k, v = (rng.standard_normal((1, 24, 2, 64)).astype(np.float32) for _ in range(3))
  c = rng.uniform(0.5, 2.0, (1, 24, 2)).astype(np.float32)
  seg = np.array([[0] * 10 + [1] * 14], np.int32)
  out = mosaic_gpu.flash_attention(q, k, v, c, None, seg, seg, None, scale=0.2, causal=True,
                                   window=None, interpret=True)
  ref, _ = attention_np(q, k, v, c, scale=0.2, causal=True, q_seg=seg, kv_seg=seg)
  assert np.abs(np.asarray(out) - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.gpu
@pytest.mark.skipif(not ON_HOPPER, reason="needs an H100/H200")
@pytest.mark.parametrize("shape,causal,tiles", [
    ((2, 256, 4, 2, 128), True, None), ((1, 384, 2, 2, 64), False, None),
    ((1, 512, 2, 1, 128), False, None), ((1, 256, 2, 2, 64), True, None),
    ((1, 512, 4, 1, 128), True, mosaic_gpu.Tiles(128, 2, 128, 2, 128, 2)),
    ((1, 384, 3, 3, 64), True, mosaic_gpu.Tiles(64, 3, 64, 3, 64, 3))])
def test_hopper_forward_and_gradients(shape, causal, tiles):
  B, T, N, K, H = shape
  zeros = lambda *shape: jnp.zeros(shape, jnp.bfloat16)
  assert mosaic_gpu.unsupported_reason(zeros(B, T, N, H), zeros(B, T, K, H), None, None, None,
                                       None, tiles or mosaic_gpu.default_tiles(H), False) is None
  rng = np.random.default_rng(T + H)
  q, w = (rng.standard_normal((B, T, N, H)).astype(np.float32) for _ in range(2))
  k, v = (rng.standard_normal((B, T, K, H)).astype(np.float32) for _ in range(2))
  q, k, v = (np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32)) for x in (q, k, v))
  c = (0.4 * np.log(np.arange(1, T + 1))[None, :, None] * np.ones((B, 1, N))).astype(np.float32)
  scale = 1 / np.sqrt(H)
  bf = lambda x: jnp.asarray(x, jnp.bfloat16)
  attend = lambda q, k, v, c: mosaic_gpu.flash_attention(
      q, k, v, c, None, None, None, None, scale=scale, causal=causal, window=None, tiles=tiles)
  out = np.asarray(jax.jit(attend)(bf(q), bf(k), bf(v), c).astype(jnp.float32))
  ref, _ = attention_np(q, k, v, c, scale=scale, causal=causal)
  assert np.abs(out - ref).max() <= BF16_FWD_TOL * np.abs(ref).max()
  loss = lambda *a: (attend(*a).astype(jnp.float32) * w).sum()
  got = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(bf(q), bf(k), bf(v), jnp.asarray(c))
  ok = allowed_mask_np(B, T, T, causal=causal)
  with jax.enable_x64(True):
    want = _reference_grads(*(np.asarray(x, np.float64) for x in (q, k, v, c, w)), ok, scale)
  for name, g, r in zip("qkvc", got, want):
    g, r = np.asarray(g.astype(jnp.float32)), np.asarray(r)
    assert np.abs(g - r).max() <= BF16_GRAD_TOL * np.abs(r).max(), name
