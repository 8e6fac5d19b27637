"""The flax attention_fn drop-ins against flax's contract: batch dims, sown weights, dropout."""
import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ssmax_jax
from ssmax_jax.nn import SSMaxAttentionFn, make_linen_attention_fn
from tests.reference_np import attention_np, multiplier_np

T, N, H = 5, 4, 8


def _qkv(batch, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return [jax.random.normal(k, batch + (T, N, H)) for k in keys]


def _weights_np(q_BTNH, k_BSNH, s, mask_BNTS):
  """softmax of the SSMax logits [B,N,T,S]: attention of one-hot values reads them back."""
  B, S = q_BTNH.shape[0], k_BSNH.shape[1]
  n = np.asarray(mask_BNTS).sum(-1).transpose(0, 2, 1)
  eye_BSNH = np.broadcast_to(np.eye(S, H)[None, :, None, :], (B, S, N, H))
  w_BTNH, _ = attention_np(q_BTNH, k_BSNH, eye_BSNH, multiplier_np("ssmax", n, s=s),
                           head_mask=mask_BNTS)
  return w_BTNH[..., :S].transpose(0, 2, 1, 3)


@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
def test_leading_batch_dims_fold_into_one(batch):
  fn = SSMaxAttentionFn(N, "ssmax", l_train=8)
  q, k, v = _qkv(batch)
  mask = jnp.broadcast_to(jnp.tril(jnp.ones((T, T), bool)), batch + (1, T, T))
  bias = jax.random.normal(jax.random.key(9), (N, T, T))
  out = jax.jit(fn)(q, k, v, bias, mask)
  assert out.shape == batch + (T, N, H)
  flat = lambda x: x.reshape((-1,) + x.shape[-3:])
  ref = jax.jit(ssmax_jax.dot_product_attention)(flat(q), flat(k), flat(v), bias, flat(mask),
                                                 s=fn.logit_scale.s[...])
  np.testing.assert_allclose(out.reshape(ref.shape), ref, rtol=1e-5, atol=1e-6)


def test_mismatched_batch_dims_are_refused():
  q, k, v = _qkv((2,))
  with pytest.raises(ValueError, match="batch dims"):
    SSMaxAttentionFn(N)(q, k[:1], v[:1])


def test_nnx_sown_weights_where_flax_puts_them():
  x = jax.random.normal(jax.random.key(1), (2, 3, T, 16))
  mask = nnx.make_causal_mask(jnp.ones((2, 3, T)))
  ours = nnx.MultiHeadAttention(N, 16, qkv_features=N * H, decode=False, rngs=nnx.Rngs(0),
                                attention_fn=SSMaxAttentionFn(N, "ssmax", s_init=0.7))
  theirs = nnx.MultiHeadAttention(N, 16, qkv_features=N * H, decode=False, rngs=nnx.Rngs(0))
  out = ours(x, mask=mask, sow_weights=True)
  theirs(x, mask=mask, sow_weights=True)
  (w,), (w_flax,) = (nnx.state(m, nnx.Intermediate)["attention_weights"].get_value()
                     for m in (ours, theirs))
  assert w.shape == w_flax.shape == (2, 3, N, T, T)
  np.testing.assert_allclose(out, ours(x, mask=mask), rtol=1e-5, atol=1e-6)  # output unchanged
  fold = lambda a: np.asarray(a).reshape((6,) + a.shape[2:])
  ref = _weights_np(fold(ours.query(x)), fold(ours.key(x)), 0.7 * np.ones(N),
                    np.broadcast_to(fold(mask), (6, N, T, T)).astype(bool))
  np.testing.assert_allclose(fold(w), ref, rtol=1e-5, atol=1e-6)


def test_linen_sown_weights_where_flax_puts_them():
  x = jax.random.normal(jax.random.key(2), (3, T, 16))
  mask = linen.make_causal_mask(jnp.ones((3, T)))
  ours = linen.MultiHeadDotProductAttention(
      num_heads=N, qkv_features=N * H, attention_fn=make_linen_attention_fn("ssmax", s_init=0.7))
  theirs = linen.MultiHeadDotProductAttention(num_heads=N, qkv_features=N * H)
  params = ours.init(jax.random.key(0), x, mask=mask)
  _, got = ours.apply(params, x, mask=mask, sow_weights=True, mutable=["intermediates"])
  _, want = theirs.apply({"params": {k: v for k, v in params["params"].items()
                                     if k != "ssmax_s"}}, x, mask=mask, sow_weights=True,
                         mutable=["intermediates"])
  (w,), (w_flax,) = got["intermediates"]["attention_weights"], want["intermediates"][
      "attention_weights"]
  assert w.shape == w_flax.shape == (3, N, T, T)
  proj = lambda name: np.asarray(jnp.einsum(
      "btd,dnh->btnh", x, params["params"][name]["kernel"]) + params["params"][name]["bias"])
  ref = _weights_np(proj("query"), proj("key"), 0.7 * np.ones(N),
                    np.broadcast_to(np.asarray(mask), (3, N, T, T)).astype(bool))
  np.testing.assert_allclose(w, ref, rtol=1e-5, atol=1e-6)


def _dropout_call(fn, rng, *, rate=0.5, deterministic=False, broadcast=True, batch=(8,)):
  q, k, _ = _qkv(batch)
  # One-hot values [..., S, N, H]: the outputs' first S columns are the dropped-out weights.
  v = jnp.broadcast_to(jnp.eye(T, H)[:, None, :], batch + (T, N, H))
  call = lambda q, k, v, rng: fn(q, k, v, dropout_rate=rate, dropout_rng=rng,
                                 deterministic=deterministic, broadcast_dropout=broadcast)
  return jax.jit(call)(q, k, v, rng)[..., :T]


def test_dropout_scales_kept_weights_and_is_deterministic():
  fn = SSMaxAttentionFn(N, "ssmax")  # the linen drop-in shares this path (_dropin.py)
  plain = np.asarray(_dropout_call(fn, None, rate=0.0))
  np.testing.assert_allclose(_dropout_call(fn, jax.random.key(0), deterministic=True), plain)
  a = np.asarray(_dropout_call(fn, jax.random.key(0), broadcast=False))
  np.testing.assert_array_equal(a, _dropout_call(fn, jax.random.key(0), broadcast=False))
  assert not np.allclose(a, _dropout_call(fn, jax.random.key(1), broadcast=False))
  # Each weight is dropped (0) or kept and divided by the keep probability 0.5.
  kept = a != 0
  np.testing.assert_allclose(a[kept], 2 * plain[kept], rtol=1e-5)
  assert 0.4 < 1 - kept.mean() < 0.6  # 8*5*4*5 = 800 draws at rate 0.5
  # broadcast_dropout: one [T,S] pattern for every batch entry and head.
  b_TNS = np.asarray(_dropout_call(fn, jax.random.key(0))) != 0
  assert (b_TNS == b_TNS[:1, :, :1]).all()


def test_dropout_with_a_kernel_backend_is_refused():
  for fn in (SSMaxAttentionFn(N, implementation="pallas"),
             make_linen_attention_fn("softmax", implementation="cudnn")):
    with pytest.raises(ValueError, match="dropout_rate.*implementation='xla'"):
      _dropout_call(fn, jax.random.key(0))
  with pytest.raises(ValueError, match="dropout_rng"):
    _dropout_call(SSMaxAttentionFn(N), None)


def test_nnx_module_dropout_runs_through_the_drop_in():
  x = jax.random.normal(jax.random.key(1), (2, T, 16))
  mha = nnx.MultiHeadAttention(N, 16, qkv_features=N * H, decode=False, dropout_rate=0.3,
                               attention_fn=SSMaxAttentionFn(N), rngs=nnx.Rngs(0, dropout=1))
  train = mha(x, deterministic=False)
  np.testing.assert_allclose(mha(x, deterministic=True), mha(x, deterministic=True))
  assert not np.allclose(train, mha(x, deterministic=True))
