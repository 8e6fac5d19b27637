"""The chunked cross-entropy op (ssmax_jax/ops/cross_entropy): its backends' shared contract on
one case table against float64 (interpret mode on any machine, compiled on a GPU, marked gpu);
the loss with implementation='pallas' against 'xla', value and gradients; the backend choice;
and the kernel's Triton lowering for an H200 (traced on any machine)."""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ssmax_jax.ops import _dispatch
from ssmax_jax.ops.cross_entropy import api, cross_entropy_sum, triton, xla_loss_and_grad
from tests import op_backends as ob


DEFAULT_TILES = (triton.BLOCK_ROWS, triton.BLOCK_VOCAB, triton.NUM_WARPS)


class Case(NamedTuple):
  name: str
  shape: tuple  # M, V (the last 5 columns are padding)
  dtype: object
  tiles: tuple = DEFAULT_TILES  # block_rows, block_vocab, num_warps (the kernel's)


CASES = [Case(f"{name}_{jnp.dtype(dtype).name}", (16, 300), dtype, tiles)
         for name, tiles in [("partial_last_tile", (triton.BLOCK_ROWS, 128, triton.NUM_WARPS)),
                             ("one_pass_per_row", (2, 512, triton.NUM_WARPS))]
         for dtype in (jnp.float32, jnp.bfloat16)]
GPU_CASES = [Case(f"paper_vocab_{':'.join(map(str, tiles))}_{jnp.dtype(dtype).name}",
                  (64, 50304), dtype, tiles)
             for tiles in [DEFAULT_TILES, (1, 1024, 4), (1, 65536, 32)]
             for dtype in (jnp.float32, jnp.bfloat16)]


def _reference(logits, targets, weights, vocab_size):
  """float64 (weighted losses, (softmax - onehot) * weight) over the real columns."""
  x = ob.f64(logits)[:, :vocab_size]
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


@pytest.mark.parametrize("backend,case", ob.params(CASES, GPU_CASES))
def test_contract_matches_float64(backend, case):
  (M, V), vocab_size = case.shape, case.shape[1] - 5  # padding, as with vocab_pad_multiple
  logits, targets, weights = _inputs(M, V, case.dtype)
  if backend == "xla":
    loss, grad = xla_loss_and_grad(logits, targets, weights, vocab_size, jnp.float32)
  else:
    block_rows, block_vocab, num_warps = case.tiles
    loss, grad = triton.cross_entropy_with_grad(
        logits, targets, weights, vocab_size=vocab_size, grad_dtype=jnp.float32,
        block_vocab=block_vocab, block_rows=block_rows, num_warps=num_warps,
        interpret=ob.INTERPRET)
  want_loss, want_grad = _reference(logits, targets, weights, vocab_size)
  np.testing.assert_allclose(loss, want_loss, rtol=2e-6, atol=2e-5)
  np.testing.assert_allclose(np.asarray(grad)[:, :vocab_size], want_grad, atol=2e-6)
  assert not np.asarray(grad)[:, vocab_size:].any()  # padding takes no probability


def test_kernel_names_a_pipelining_depth_below_one():
  logits, targets, weights = _inputs(4, 40, jnp.float32)
  with pytest.raises(ValueError, match="num_stages=0: pass a positive pipelining depth"):
    triton.cross_entropy_with_grad(logits, targets, weights, vocab_size=40,
                                   grad_dtype=jnp.float32, num_stages=0, interpret=True)


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
  monkeypatch.setattr(triton, "BLOCK_ROWS", 4)  # blocks of 4 rows, as tuned before
  # chunk_tokens=2: 1 position x batch 2 = 2 rows, half a block
  with pytest.raises(ValueError, match=f"chunks of a multiple of {triton.BLOCK_ROWS} "
                                       "tokens per device; batch 2 x 1 positions"):
    jax.grad(lambda h: cross_entropy_sum(h, w, targets, mask, real_V, 2, "float32", "pallas"))(h)
  with pytest.raises(ValueError, match="loss implementation='triton' is unknown"):
    cross_entropy_sum(h, w, targets, mask, real_V, 8, "float32", "triton")


def test_lowers_to_triton_for_h200_without_a_gpu():
  M, V = 8192, 50304
  for dtype in (jnp.float32, jnp.bfloat16):
    args = (jax.ShapeDtypeStruct((M, V), dtype), jax.ShapeDtypeStruct((M,), jnp.int32),
            jax.ShapeDtypeStruct((M,), jnp.float32))
    text = ob.h200_lowering(lambda *a: triton.cross_entropy_with_grad(
        *a, vocab_size=50257, grad_dtype=jnp.bfloat16), *args)
    assert "__gpu$xla.gpu.triton" in text
    assert f"grid_x = {M // triton.BLOCK_ROWS}" in text  # one program per row block


def test_choice(monkeypatch):
  monkeypatch.setattr(triton, "BLOCK_ROWS", 2)  # rows that do not fill a block
  B, t = 4, triton.BLOCK_ROWS  # 8 rows: 4 blocks
  spec = P(("data", "fsdp"), None, "tensor")  # [B, T, V] logits on a (data, fsdp, tensor) mesh
  for impl in (None, "auto", "xla"):  # CPU: XLA unless asked for the kernel
    assert api._choose(impl, B, t, None) == "xla"
  assert api._choose("pallas", B, t + 1, None) == "triton"  # 10 rows: 5 blocks
  with pytest.raises(ValueError, match="loss implementation='pallas' cannot take .*chunks of a "
                                       "multiple of 2 tokens per device; batch 1 x 3"):
    api._choose("pallas", 1, 3, None)
  monkeypatch.setattr(_dispatch, "platform", lambda: "gpu")
  assert api._choose(None, B, t, None) == "triton"
  assert api._choose(None, 1, 3, None) == "xla"  # not whole blocks
  assert api._choose("xla", B, t, None) == "xla"
  with jax.sharding.use_abstract_mesh(ob.data_mesh(2, 2, 1)):  # rows split 4 ways: 1 block
    assert api._choose(None, B, t, spec) == "triton"
  with jax.sharding.use_abstract_mesh(ob.data_mesh(4, 2, 1)):  # half a block per device
    assert api._choose(None, 2 * B, t // 2, spec) == "xla"
  with jax.sharding.use_abstract_mesh(ob.data_mesh(1, 1, 2)):
    assert api._choose(None, B, t, P(None, None, "tensor")) == "xla"  # the vocabulary split
    assert api._choose(None, B, t, P(None, None, None)) == "triton"  # 263 columns: whole rows
    with pytest.raises(ValueError, match="splits the vocabulary over 'tensor'.* tensor 1"):
      api._choose("pallas", B, t, P(None, None, "tensor"))
  monkeypatch.setattr(_dispatch, "platform", lambda: "tpu")
  assert api._choose(None, B, t, None) == "xla"
  with pytest.raises(ValueError, match="loss implementation='pallas' has no backend on tpu"):
    api._choose("pallas", B, t, None)


def test_default_loss_on_cpu_is_the_xla_loss():
  h, w, targets, mask, real_V = _loss_inputs(4)
  for impl in ("auto", None):  # None: the argument's default
    args = (targets, mask, real_V, 8, "float32") + ((impl,) if impl else ())
    got = jax.value_and_grad(lambda h, w: cross_entropy_sum(h, w, *args), (0, 1))(h, w)
    want = jax.value_and_grad(
        lambda h, w: cross_entropy_sum(h, w, targets, mask, real_V, 8, "float32", "xla"),
        (0, 1))(h, w)
    tol = 1e-5 if ob.ON_GPU else 0.0  # on a GPU the default runs the kernel
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(g, r, rtol=tol, atol=tol)
