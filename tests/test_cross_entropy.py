"""The loss kernel (ssmax_jax/kernels/cross_entropy_gpu.py) against a float64 reference, in
interpret mode on any machine and compiled on a GPU (marked gpu); the loss with
implementation='pallas' against the XLA loss, value and gradients; and what 'auto' resolves to."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmax_jax.kernels import cross_entropy_gpu
from ssmax_jax.train.loss import cross_entropy_sum, resolve_implementation

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


def _check(M, V, dtype, block_vocab, interpret, block_rows=cross_entropy_gpu.BLOCK_ROWS,
           num_warps=cross_entropy_gpu.NUM_WARPS):
  vocab_size = V - 5  # padding columns at the end, as with model.vocab_pad_multiple
  logits, targets, weights = _inputs(M, V, dtype)
  loss, grad = cross_entropy_gpu.cross_entropy_with_grad(
      logits, targets, weights, vocab_size=vocab_size, grad_dtype=jnp.float32,
      block_vocab=block_vocab, block_rows=block_rows, num_warps=num_warps, interpret=interpret)
  want_loss, want_grad = _reference(logits, targets, weights, vocab_size)
  np.testing.assert_allclose(loss, want_loss, rtol=2e-6, atol=2e-5)
  np.testing.assert_allclose(np.asarray(grad)[:, :vocab_size], want_grad, atol=2e-6)
  assert not np.asarray(grad)[:, vocab_size:].any()  # padding takes no probability


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernel_matches_float64_with_a_partial_last_tile(dtype):
  _check(16, 300, dtype, block_vocab=128, interpret=True)  # tiles of 128: 44 columns in the last


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernel_matches_float64_in_one_pass_when_a_tile_covers_the_row(dtype):
  _check(16, 300, dtype, block_vocab=512, block_rows=2, interpret=True)


def test_kernel_names_a_pipelining_depth_below_one():
  logits, targets, weights = _inputs(4, 40, jnp.float32)
  with pytest.raises(ValueError, match="num_stages=0: pass a positive pipelining depth"):
    cross_entropy_gpu.cross_entropy_with_grad(logits, targets, weights, vocab_size=40,
                                              grad_dtype=jnp.float32, num_stages=0,
                                              interpret=True)


def _loss_inputs(seed, B=2, T=16, D=16, V=40, real_V=37):
  """Hidden states, output matrix (V - real_V padding columns), targets, loss mask, real_V."""
  k = jax.random.split(jax.random.key(seed), 4)
  h, w = jax.random.normal(k[0], (B, T, D)), jax.random.normal(k[1], (D, V))
  targets = jax.random.randint(k[2], (B, T), 0, real_V)
  mask = (jax.random.uniform(k[3], (B, T)) > 0.3).astype(jnp.float32)
  return h, w, targets, mask, real_V


def test_loss_with_the_kernel_matches_the_xla_loss(monkeypatch):
  h, w, targets, mask, real_V = _loss_inputs(3)
  for logits_dtype in ("float32", "bfloat16"):
    xla = lambda h, w: cross_entropy_sum(h, w, targets, mask, real_V, 8, logits_dtype, "xla")
    fused = lambda h, w: cross_entropy_sum(h, w, targets, mask, real_V, 8, logits_dtype, "pallas")
    (got, got_g), (want, want_g) = (jax.value_and_grad(f, (0, 1))(h, w) for f in (fused, xla))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for g, r in zip(got_g, want_g):
      np.testing.assert_allclose(g, r, atol=1e-5)
  monkeypatch.setattr(cross_entropy_gpu, "BLOCK_ROWS", 4)  # blocks of 4 rows, as tuned before
  # chunk_tokens=2: 1 position x batch 2 = 2 rows, half a block
  with pytest.raises(ValueError, match=f"chunks of a multiple of {cross_entropy_gpu.BLOCK_ROWS} "
                                       "tokens per device; batch 2 x 1 positions"):
    jax.grad(lambda h: cross_entropy_sum(h, w, targets, mask, real_V, 2, "float32", "pallas"))(h)
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
  assert "__gpu$xla.gpu.triton" in text
  assert f"grid_x = {M // cross_entropy_gpu.BLOCK_ROWS}" in text  # one program per row block


def _mesh(data, fsdp, tensor):
  return jax.sharding.AbstractMesh((data, fsdp, tensor), ("data", "fsdp", "tensor"))


def test_auto_takes_the_kernel_only_on_a_gpu_where_it_fits(monkeypatch):
  monkeypatch.setattr(cross_entropy_gpu, "BLOCK_ROWS", 2)  # rows that do not fill a block
  rows, V = 4 * cross_entropy_gpu.BLOCK_ROWS, 264
  assert resolve_implementation("auto", rows, V, backend="gpu") == "pallas"
  assert resolve_implementation("auto", rows, V, backend="cpu") == "xla"
  assert resolve_implementation("auto", rows, V, backend="tpu") == "xla"
  assert resolve_implementation("auto", rows + 1, V, backend="gpu") == "xla"  # not whole blocks
  # Explicit names pass through (an unfitting 'pallas' raises in the loss, above).
  assert resolve_implementation("pallas", rows + 2, V, backend="cpu") == "pallas"
  assert resolve_implementation("xla", rows, V, backend="gpu") == "xla"
  with jax.sharding.use_abstract_mesh(_mesh(2, 2, 1)):  # rows split 4 ways: one block each
    assert resolve_implementation("auto", rows, V, backend="gpu") == "pallas"
  with jax.sharding.use_abstract_mesh(_mesh(4, 2, 1)):  # half a block per device
    assert resolve_implementation("auto", rows, V, backend="gpu") == "xla"
  with jax.sharding.use_abstract_mesh(_mesh(1, 1, 2)):  # the vocabulary split over tensor
    assert resolve_implementation("auto", rows, V, backend="gpu") == "xla"
  with jax.sharding.use_abstract_mesh(_mesh(1, 1, 2)):  # 263 columns do not split: whole rows
    assert resolve_implementation("auto", rows, 263, backend="gpu") == "pallas"


def test_auto_loss_on_cpu_is_the_xla_loss():
  h, w, targets, mask, real_V = _loss_inputs(4)
  for impl in ("auto", None):  # None: the argument's default
    args = (targets, mask, real_V, 8, "float32") + ((impl,) if impl else ())
    got = jax.value_and_grad(lambda h, w: cross_entropy_sum(h, w, *args), (0, 1))(h, w)
    want = jax.value_and_grad(
        lambda h, w: cross_entropy_sum(h, w, targets, mask, real_V, 8, "float32", "xla"),
        (0, 1))(h, w)
    tol = 1e-5 if ON_GPU else 0.0  # on a GPU 'auto' runs the kernel
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(g, r, rtol=tol, atol=tol)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a GPU")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("tiles", [(cross_entropy_gpu.BLOCK_ROWS, cross_entropy_gpu.BLOCK_VOCAB,
                                    cross_entropy_gpu.NUM_WARPS), (1, 1024, 4), (1, 65536, 32)])
def test_kernel_on_gpu_at_the_paper_vocabulary(dtype, tiles):
  block_rows, block_vocab, num_warps = tiles
  _check(64, 50304, dtype, block_vocab=block_vocab, block_rows=block_rows, num_warps=num_warps,
         interpret=False)
