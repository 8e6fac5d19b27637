"""The Hopper (Pallas Mosaic GPU) kernels (ssmax_jax/ops/attention/mosaic_gpu.py, backward in
mosaic_gpu_vjp.py): lowering without a GPU, their scope, and the shared cases on a Hopper GPU.

On CPU: the forward and the backward's dq/dc and dk/dv kernels are lowered for an abstract
H200 (catches lowering errors without a GPU); calls outside the kernels' scope raise, and the
old kernels.mosaic_gpu path still hands them to Triton. On a Hopper GPU (marked gpu): the
shared cases tagged mosaic_gpu; bf16 tolerances relative to the largest reference magnitude:
2e-2 forward, 4e-2 gradients (P is rounded to bf16 before P.V).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmax_jax.ops.attention import mosaic_gpu
from tests import attention_cases as ac
from tests.reference_np import attention_np

ON_HOPPER = jax.default_backend() == "gpu" and mosaic_gpu._on_hopper()
S128_2 = mosaic_gpu.Settings(128, 2, 64, 2, 64, 2)


def _lower(fn, *args):
  device = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=132, platform="gpu")
  mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
  with jax.sharding.use_abstract_mesh(mesh):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize("head_dim,causal,settings", [
    (128, True, S128_2), (64, False, mosaic_gpu.Settings(64, 3, 64, 2, 64, 2))])
def test_lowers_for_h200_without_a_gpu(head_dim, causal, settings):
  x = jax.ShapeDtypeStruct((1, 256, 2, head_dim), jnp.bfloat16)
  c = jax.ShapeDtypeStruct((1, 256, 2), jnp.float32)
  fwd = lambda q, k, v, c: mosaic_gpu._flash(q, k, v, c, 0.1, causal, settings)
  assert "mosaic_gpu" in _lower(fwd, x, x, x, c)


@pytest.mark.parametrize("head_dim,causal,heads,settings", [
    (128, True, (2, 2), S128_2),
    (64, False, (4, 2), mosaic_gpu.Settings(64, 3, 128, 2, 128, 3)),
    (128, True, (4, 1), mosaic_gpu.Settings(128, 2, 64, 3, 64, 2))])
def test_backward_lowers_for_h200_without_a_gpu(head_dim, causal, heads, settings):
  N, K = heads
  q = jax.ShapeDtypeStruct((1, 256, N, head_dim), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((1, 256, K, head_dim), jnp.bfloat16)
  c = jax.ShapeDtypeStruct((1, 256, N), jnp.float32)
  loss = lambda q, k, v, c: mosaic_gpu._flash(q, k, v, c, 0.1, causal, settings).astype(
      jnp.float32).sum()
  text = _lower(jax.grad(loss, argnums=(0, 1, 2, 3)), q, kv, kv, c)
  assert text.count("mosaic_gpu") >= 3   # forward, dq/dc and dk/dv kernels
  assert "triton" not in text


def test_scope():
  bf = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16)
  reason = lambda q, k, **kw: mosaic_gpu.kernel_reason(
      q, k, k, None, kw.get("q_pos"), kw.get("seg"), kw.get("seg"), kw.get("kv_len"),
      window=kw.get("window"), settings=S128_2)
  assert reason(bf(1, 256, 2, 128), bf(1, 256, 2, 128)) is None
  assert reason(bf(1, 256, 2, 96), bf(1, 256, 2, 96)) == "head dim 96"
  assert reason(bf(1, 200, 2, 64), bf(1, 200, 2, 64)) == "T=200, S=200"
  f32 = jax.ShapeDtypeStruct((1, 256, 2, 64), jnp.float32)
  assert reason(f32, f32).startswith("dtypes")
  assert reason(bf(1, 256, 2, 64), bf(1, 256, 2, 64), window=(8, 0)) is not None
  x = jnp.zeros((1, 256, 2, 64), jnp.bfloat16)
  with pytest.raises(ValueError, match="cannot take this call: positions"):
    mosaic_gpu.flash_attention(x, x, x, jnp.ones((1, 256, 2)), None, None, None,
                               jnp.array([256]), scale=0.1, causal=True, window=None)
  with pytest.raises(ValueError, match="no interpret mode"):
    mosaic_gpu.flash_attention(x, x, x, jnp.ones((1, 256, 2)), None, None, None, None,
                               scale=0.1, causal=True, window=None, interpret=True)


def test_old_path_hands_unsupported_calls_to_triton():
  from ssmax_jax.kernels import mosaic_gpu as old_path
  rng = np.random.default_rng(0)
  q, k, v = (rng.standard_normal((1, 24, 2, 64)).astype(np.float32) for _ in range(3))
  c = rng.uniform(0.5, 2.0, (1, 24, 2)).astype(np.float32)
  seg = np.array([[0] * 10 + [1] * 14], np.int32)
  out = old_path.flash_attention(q, k, v, c, None, seg, seg, None, scale=0.2, causal=True,
                                 window=None, interpret=True)
  ref, _ = attention_np(q, k, v, c, scale=0.2, causal=True, q_seg=seg, kv_seg=seg)
  assert np.abs(np.asarray(out) - ref).max() <= 1e-5 * np.abs(ref).max()


@functools.cache
def _fn(causal, scale, settings):
  run = functools.partial(mosaic_gpu.flash_attention, settings=settings)
  return ac.out_and_grads(run, scale=scale, causal=causal, window=None)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_HOPPER, reason="needs an H100/H200")
@pytest.mark.parametrize("case,settings", [
    *[(c, None) for c in ac.cases("mosaic_gpu")],
    (ac.Case("causal_mqa_128x2", (1, 512, 512, 4, 1, 128), jnp.bfloat16, causal=True,
             positions=None, lengths=None), mosaic_gpu.Settings(128, 2, 128, 2, 128, 2)),
    (ac.Case("causal_64x3", (1, 384, 384, 3, 3, 64), jnp.bfloat16, causal=True,
             positions=None, lengths=None), mosaic_gpu.Settings(64, 3, 64, 3, 64, 3))],
    ids=lambda p: getattr(p, "name", str(p)))
def test_hopper_forward_and_gradients(case, settings):
  B, T, N, K, H = case.shape[0], case.shape[1], *case.shape[3:]
  zeros = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16)
  assert mosaic_gpu.kernel_reason(
      zeros(B, T, N, H), zeros(B, T, K, H), None, None, None, None, None, None, window=None,
      settings=settings or mosaic_gpu.default_settings(H)) is None
  x = ac.draw(case)
  c = (0.4 * np.log(np.arange(1, T + 1))[None, :, None] * np.ones((B, 1, N))).astype(np.float32)
  ac.check(_fn(case.causal, 1 / np.sqrt(H), settings), x._replace(c=c), jnp.bfloat16,
           scale=1 / np.sqrt(H), causal=case.causal, window=None, tol_fwd=2e-2, tol_grad=4e-2)
