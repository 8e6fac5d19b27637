"""What the op shares with jax.nn.dot_product_attention: unbatched ranks (and jax.vmap over
them), return_residual (the log-sum-exp, against a float64 computation), a traced scale."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssmax_jax
from tests.reference_np import allowed_mask_np, attention_np

B, T, S, N, K, H = 2, 8, 8, 4, 2, 16
S_HEAD = np.array([0.3, 0.5, 0.7, 0.9], np.float32)


def _qkv(seed=0):
  kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(kq, (B, T, N, H)), jax.random.normal(kk, (B, S, K, H)),
          jax.random.normal(kv, (B, S, K, H)))


SEG_BT = np.array([[0, 0, 0, 1, 1, 1, 1, 2], [0, 0, 0, 0, 0, 1, 1, 1]], np.int32)
POS_BT = np.array([np.arange(T) + 0, np.arange(T)[::-1]], np.int32)
MASK_BNTS = np.random.default_rng(0).random((B, N, T, S)) < 0.7
BIAS_BNTS = np.random.default_rng(1).normal(size=(B, N, T, S)).astype(np.float32)
C_BTN = np.random.default_rng(2).uniform(0.5, 2.0, (B, T, N)).astype(np.float32)


@pytest.mark.parametrize("kw", [
    dict(is_causal=True, s=S_HEAD),
    dict(segment_ids=SEG_BT, query_positions=POS_BT, is_causal=True),
    dict(segment_ids=(SEG_BT, SEG_BT), local_window_size=(2, 1)),
    dict(query_seq_lengths=np.array([5, 8], np.int32),
         key_value_seq_lengths=np.array([3, 0], np.int32), s=0.5),
    dict(mask=MASK_BNTS, bias=BIAS_BNTS, logit_multiplier=C_BTN),
], ids=["causal_s", "segments_positions", "pair_window", "lengths", "mask_bias_c"])
@pytest.mark.parametrize("implementation", ["xla", "pallas"])
def test_vmap_of_unbatched_calls_equals_the_batched_call(kw, implementation):
  if implementation == "pallas" and "query_positions" not in kw:
    pytest.skip("one kernel case is enough: interpret mode is slow")
  q, k, v = _qkv()
  want = ssmax_jax.dot_product_attention(q, k, v, implementation=implementation, **kw)
  names = sorted(n for n in kw if n not in ("s", "is_causal", "local_window_size"))
  fixed = {n: kw[n] for n in kw if n not in names}

  def one(q, k, v, *args):
    return ssmax_jax.dot_product_attention(q, k, v, implementation=implementation,
                                           **dict(zip(names, args)), **fixed)
  got = jax.vmap(one)(q, k, v, *(kw[n] for n in names))
  np.testing.assert_allclose(got, want, atol=2e-6)
  # One unbatched call alone is the batched call's row too.
  np.testing.assert_allclose(one(q[1], k[1], v[1], *(jax.tree.map(lambda x: x[1], kw[n])
                                                     for n in names)), want[1], atol=2e-6)


def test_vmap_over_the_batched_op():
  q, k, v = _qkv()
  qs, ks, vs = (jnp.stack([x, 2 * x]) for x in (q, k, v))
  got = jax.vmap(lambda q, k, v: ssmax_jax.dot_product_attention(q, k, v, is_causal=True,
                                                                 s=S_HEAD))(qs, ks, vs)
  for i in range(2):
    np.testing.assert_allclose(
        got[i], ssmax_jax.dot_product_attention(qs[i], ks[i], vs[i], is_causal=True, s=S_HEAD),
        atol=2e-6)


def test_unbatched_attention_counts():
  q, k, _ = _qkv()
  kw = dict(is_causal=True, segment_ids=SEG_BT, key_value_seq_lengths=np.array([5, 3]))
  want = ssmax_jax.attention_counts(q, k, **kw)
  got = ssmax_jax.attention_counts(q[1], k[1], is_causal=True, segment_ids=SEG_BT[1],
                                   key_value_seq_lengths=3)
  assert got.shape == (T,)
  np.testing.assert_array_equal(got, want[1])
  assert ssmax_jax.attention_counts(q[0], k[0], MASK_BNTS[0]).shape == (T, N)


@pytest.mark.parametrize("kw,match", [
    (dict(key=jnp.zeros((B, S, K, H))), "ranks"),
    (dict(bias=jnp.zeros((1, N, T, S))), "bias"),
    (dict(mask=jnp.ones((1, N, T, S), bool)), "mask"),
    (dict(key_value_seq_lengths=np.array([3])), "key_value_seq_lengths"),
    (dict(query_seq_lengths=np.array([3])), "query_seq_lengths"),
    (dict(segment_ids=SEG_BT), "segment_ids"),
])
def test_unbatched_mistakes_are_refused(kw, match):
  q, k, v = (x[0] for x in _qkv())
  args = dict(query=q, key=k, value=v)
  args.update({n: kw.pop(n) for n in ("key",) if n in kw})
  with pytest.raises(ValueError, match=match):
    ssmax_jax.dot_product_attention(**args, **kw)


def _lse_np(q, k, c=None, *, bias=None, **mask_kwargs):
  """Float64 natural-log log-sum-exp [B,T,N] of the final logits; -inf on empty rows."""
  q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
  c = np.ones((B, T, N)) if c is None else np.asarray(c, np.float64)
  ok_BTS = allowed_mask_np(B, T, S, **mask_kwargs)
  z_BNTS = np.einsum("btnh,bsnh->bnts", q, np.repeat(k, N // K, axis=2)) / np.sqrt(H)
  z_BNTS = z_BNTS * np.transpose(c, (0, 2, 1))[..., None]
  if bias is not None:
    z_BNTS = z_BNTS + bias
  z_BNTS = np.where(ok_BTS[:, None], z_BNTS, -np.inf)
  with np.errstate(divide="ignore"):
    lse_BNT = np.log(np.exp(z_BNTS).sum(-1))
  return np.transpose(lse_BNT, (0, 2, 1))


@pytest.mark.parametrize("kw,np_kw", [
    (dict(is_causal=True), dict(causal=True)),
    (dict(segment_ids=SEG_BT, query_positions=POS_BT, is_causal=True),
     dict(q_seg=SEG_BT, kv_seg=SEG_BT, q_pos=POS_BT, causal=True)),
    (dict(local_window_size=(2, 1)), dict(window=(2, 1))),
    (dict(key_value_seq_lengths=np.array([3, 0], np.int32)), dict(kv_len=np.array([3, 0]))),
    (dict(bias=BIAS_BNTS), dict(bias=BIAS_BNTS)),
], ids=["causal", "segments", "window", "lengths_empty_rows", "bias"])
@pytest.mark.parametrize("with_s", [False, True])
def test_residual_is_the_log_sum_exp_of_the_final_logits(kw, np_kw, with_s):
  q, k, v = _qkv()
  extra = dict(s=S_HEAD) if with_s else {}
  out, lse = ssmax_jax.dot_product_attention(q, k, v, return_residual=True, **kw, **extra)
  plain = ssmax_jax.dot_product_attention(q, k, v, **kw, **extra)
  np.testing.assert_allclose(out, plain, atol=2e-6)
  mask_np = {n: x for n, x in np_kw.items() if n != "bias"}
  c = None
  if with_s:
    n = attention_np(q, k, v, **mask_np)[1]
    c = S_HEAD * np.log(np.maximum(n, 1))
  want = _lse_np(q, k, c, bias=np_kw.get("bias"), **mask_np)
  assert lse.shape == (B, T, N) and lse.dtype == jnp.float32
  np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(want))
  if "kv_len" in np_kw:
    assert np.isneginf(lse[1]).all()  # batch row 1 attends no key: -inf, documented
  finite = np.isfinite(want)
  np.testing.assert_allclose(np.asarray(lse)[finite], want[finite], rtol=1e-5, atol=1e-5)


def test_residual_past_query_length_is_minus_inf_and_unbatched_shape():
  q, k, v = _qkv()
  _, lse = ssmax_jax.dot_product_attention(q, k, v, return_residual=True,
                                           query_seq_lengths=np.array([5, 8], np.int32))
  assert np.isneginf(lse[0, 5:]).all() and np.isfinite(lse[0, :5]).all()
  out, lse1 = ssmax_jax.dot_product_attention(q[1], k[1], v[1], return_residual=True)
  assert out.shape == (T, N, H) and lse1.shape == (T, N)


def test_residual_is_under_stop_gradient_and_float32_for_bfloat16():
  q, k, v = (x.astype(jnp.bfloat16) for x in _qkv())
  _, lse = ssmax_jax.dot_product_attention(q, k, v, return_residual=True)
  assert lse.dtype == jnp.float32
  g = jax.grad(lambda q: ssmax_jax.dot_product_attention(
      q.astype(jnp.bfloat16), k, v, return_residual=True)[1].sum())(q.astype(jnp.float32))
  assert not np.asarray(g).any()


def test_residual_refuses_a_kernel_by_name_and_auto_takes_xla():
  q, k, v = _qkv()
  with pytest.raises(ValueError, match="return_residual"):
    ssmax_jax.dot_product_attention(q, k, v, return_residual=True, implementation="pallas")
  a = ssmax_jax.dot_product_attention(q, k, v, return_residual=True, implementation=None)
  b = ssmax_jax.dot_product_attention(q, k, v, return_residual=True, implementation="xla")
  np.testing.assert_array_equal(a[1], b[1])


def test_plain_call_jaxpr_does_not_change_with_the_residual_flag_off():
  q, k, v = _qkv()
  f = lambda q: ssmax_jax.dot_product_attention(q, k, v, is_causal=True, s=S_HEAD)
  g = lambda q: ssmax_jax.dot_product_attention(q, k, v, is_causal=True, s=S_HEAD,
                                                return_residual=False)
  assert str(jax.make_jaxpr(f)(q)) == str(jax.make_jaxpr(g)(q))


@pytest.mark.parametrize("implementation", ["xla"])
def test_traced_scale_under_jit_equals_the_static_scale(implementation):
  q, k, v = _qkv()
  f = jax.jit(lambda q, scale: ssmax_jax.dot_product_attention(
      q, k, v, scale=scale, is_causal=True, s=S_HEAD, implementation=implementation))
  want = ssmax_jax.dot_product_attention(q, k, v, scale=0.3, is_causal=True, s=S_HEAD,
                                         implementation=implementation)
  np.testing.assert_allclose(f(q, jnp.float32(0.3)), want, atol=2e-6)
