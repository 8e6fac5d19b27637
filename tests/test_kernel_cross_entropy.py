"""The loss kernel (ssmax_jax/kernels/cross_entropy_gpu.py) against a float64 reference, in
interpret mode on any machine and compiled on a GPU (marked gpu); and the loss with
implementation='pallas' against the XLA loss, value and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmax_jax.kernels import cross_entropy_gpu
from ssmax_jax.train.loss import cross_entropy_sum

ON_GPU = jax.default_backend() == "gpu"


def _reference(logits, targets, weights, vocab_size):
  """float64 (weighted losses, (softmax - onehot) * weight) over the real columns."""
  x = np.asarray(jnp.asarray(logits, jnp.float32), np.float64)[:, :vocab_size]
  lse = np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) + x.max(1)
  rows = np.arange(len(x))
  t, w = np.asarray(targets), np.asarray(weights, np.float64)
  grad = np.exp(x - lse[:, None])
  grad[rows, t] -= 1.0
  return w * (lse - x[rows, t]), grad * w[:, None]


def _inputs(M, V, dtype, seed=0):
  k = jax.random.split(jax.random.key(seed), 3)
  logits = (4.0 * jax.random.normal(k[0], (M, V))).astype(dtype)
  targets = jax.random.randint(k[1], (M,), 0, V - 5)
  weights = (jax.random.uniform(k[2], (M,)) > 0.25).astype(jnp.float32)
  return logits, targets, weights


def _check(M, V, dtype, block_vocab, interpret):
  vocab_size = V - 5  # padding columns at the end, as with model.vocab_pad_multiple
  logits, targets, weights = _inputs(M, V, dtype)
  loss, grad = cross_entropy_gpu.cross_entropy_with_grad(
      logits, targets, weights, vocab_size=vocab_size, grad_dtype=jnp.float32,
      block_vocab=block_vocab, interpret=interpret)
  want_loss, want_grad = _reference(logits, targets, weights, vocab_size)
  np.testing.assert_allclose(loss, want_loss, rtol=2e-6, atol=2e-5)
  np.testing.assert_allclose(np.asarray(grad)[:, :vocab_size], want_grad, atol=2e-6)
  assert not np.asarray(grad)[:, vocab_size:].any()  # padding takes no probability


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernel_matches_float64_with_a_partial_last_tile(dtype):
  _check(16, 300, dtype, block_vocab=128, interpret=True)  # tiles of 128: 44 columns in the last


def test_loss_with_the_kernel_matches_the_xla_loss():
  k = jax.random.split(jax.random.key(3), 4)
  B, T, D, V, real_V = 2, 16, 16, 40, 37
  h, w = jax.random.normal(k[0], (B, T, D)), jax.random.normal(k[1], (D, V))
  targets = jax.random.randint(k[2], (B, T), 0, real_V)
  mask = (jax.random.uniform(k[3], (B, T)) > 0.3).astype(jnp.float32)
  for logits_dtype in ("float32", "bfloat16"):
    xla = lambda h, w: cross_entropy_sum(h, w, targets, mask, real_V, 8, logits_dtype)
    fused = lambda h, w: cross_entropy_sum(h, w, targets, mask, real_V, 8, logits_dtype, "pallas")
    (got, got_g), (want, want_g) = (jax.value_and_grad(f, (0, 1))(h, w) for f in (fused, xla))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for g, r in zip(got_g, want_g):
      np.testing.assert_allclose(g, r, atol=1e-5)
  with pytest.raises(ValueError, match="chunks of a multiple of 8 tokens"):
    jax.grad(lambda h: cross_entropy_sum(h, w, targets, mask, real_V, 6, "float32", "pallas"))(h)
  with pytest.raises(ValueError, match="implementation='triton' is unknown"):
    cross_entropy_sum(h, w, targets, mask, real_V, 8, "float32", "triton")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_lowers_to_triton_for_h200_without_a_gpu(dtype):
  device = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=132, platform="gpu")
  mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
  M, V = 8192, 50304
  args = (jax.ShapeDtypeStruct((M, V), dtype), jax.ShapeDtypeStruct((M,), jnp.int32),
          jax.ShapeDtypeStruct((M,), jnp.float32))
  fn = lambda *a: cross_entropy_gpu.cross_entropy_with_grad(*a, vocab_size=50257,
                                                            grad_dtype=jnp.bfloat16)
  with jax.sharding.use_abstract_mesh(mesh):
    text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
  assert "__gpu$xla.gpu.triton" in text and "grid_x = 1024" in text


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a GPU")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernel_on_gpu_at_the_paper_vocabulary(dtype):
  _check(64, 50304, dtype, block_vocab=cross_entropy_gpu.BLOCK_VOCAB, interpret=False)
