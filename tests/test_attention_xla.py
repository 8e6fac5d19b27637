"""The 'xla' backend (ssmax_jax/ops/attention/reference.py): the shared cases through the kernel
contract, and the public op with implementation='xla' against the float64 NumPy reference for
every variant and mask, gradients included; dense masks and bias, which only it takes."""
import functools

import jax.numpy as jnp
import numpy as np
import pytest

import ssmax_jax
from ssmax_jax.ops.attention import masks, reference
from tests import attention_cases as ac
from tests.reference_np import attention_np, multiplier_np

TOLS = {jnp.float32: (ac.F32_TOL, ac.F32_TOL), jnp.bfloat16: (2e-2, 4e-2)}
B, T, S, N, K, H = ac.OP_SHAPE


def _contract(q, k, v, c, q_pos, q_seg, kv_seg, kv_len, *, scale, causal, window):
  """The kernel contract on the XLA backend."""
  spec = masks.make_mask_spec(
      q.shape, k.shape, is_causal=causal, query_positions=q_pos, local_window_size=window,
      segment_ids=None if q_seg is None else (q_seg, kv_seg), key_value_seq_lengths=kv_len,
      num_heads=q.shape[2])
  return reference.attention_xla(q, k, v, c, spec, scale=scale)


@functools.cache
def _fn(causal, window):
  return ac.out_and_grads(_contract, scale=0.3, causal=causal, window=window)


@pytest.mark.parametrize("case", ac.cases("xla"), ids=lambda c: c.name)
def test_shared_cases(case):
  tol_fwd, tol_grad = TOLS[case.dtype]
  ac.check(_fn(case.causal, case.window), ac.draw(case), case.dtype, scale=0.3,
           causal=case.causal, window=case.window, tol_fwd=tol_fwd, tol_grad=tol_grad,
           grad_atol=1e-6)


@pytest.mark.parametrize("mask_name", list(ac.OP_MASKS))
@pytest.mark.parametrize("variant", list(ac.VARIANT_ARGS))
def test_forward_matches_float64_reference(variant, mask_name):
  op_mask, ref_mask = ac.OP_MASKS[mask_name]
  q, k, v = ac.qkv(hash((variant, mask_name)) % 1000)
  n = ssmax_jax.attention_counts(q, k, **op_mask)
  out = ssmax_jax.dot_product_attention(q, k, v, **op_mask, **ac.op_kwargs(variant, n),
                                        implementation="xla")
  _, n_ref = attention_np(q, k, v, **ref_mask)
  np.testing.assert_array_equal(np.asarray(n), n_ref[..., 0])
  c = multiplier_np(variant, n_ref, **ac.VARIANT_ARGS[variant])
  ref, _ = attention_np(q, k, v, c, **ref_mask)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  if mask_name == "fully_masked":
    assert np.all(np.asarray(out)[1] == 0) and np.all(np.asarray(out)[:, 8] == 0)


@pytest.mark.parametrize("mask_name", ["causal", "segments", "window_causal", "fully_masked"])
def test_gradients_q_k_v_s_b(mask_name):
  op_mask, ref_mask = ac.OP_MASKS[mask_name]
  q, k, v = ac.qkv(1)
  s, b = ac.VARIANT_ARGS["ssmax_bias"]["s"], ac.VARIANT_ARGS["ssmax_bias"]["b"]
  w = np.random.default_rng(2).normal(size=q.shape)
  _, n_ref = attention_np(q, k, v, **ref_mask)

  def f_jax(q, k, v, s, b):
    out = ssmax_jax.dot_product_attention(q, k, v, s=s, b=b, **op_mask, implementation="xla")
    return jnp.sum(out * w)

  def f_ref(q, k, v, s, b):
    c = multiplier_np("ssmax_bias", n_ref, s=s, b=b)
    return float(np.sum(attention_np(q, k, v, c, **ref_mask)[0] * w))

  ac.directional_check(f_jax, f_ref, (q, k, v, s, b), seed=3)


def test_gradient_logit_multiplier():
  q, k, v = ac.qkv(4)
  c = np.random.default_rng(5).uniform(0.5, 2.0, size=(B, T, N)).astype(np.float32)
  w = np.random.default_rng(6).normal(size=q.shape)

  def f_jax(c):
    return jnp.sum(ssmax_jax.dot_product_attention(q, k, v, logit_multiplier=c, is_causal=True,
                                                   implementation="xla") * w)

  def f_ref(c):
    return float(np.sum(attention_np(q, k, v, c, causal=True)[0] * w))

  ac.directional_check(f_jax, f_ref, (c,), seed=7)


def test_dense_mask_per_head_and_bias():
  q, k, v = ac.qkv(8)
  rng = np.random.default_rng(9)
  mask = rng.random((B, N, T, S)) < 0.6
  bias = rng.normal(size=(1, N, T, S)).astype(np.float32)
  s = ac.VARIANT_ARGS["ssmax"]["s"]
  n = ssmax_jax.attention_counts(q, k, mask)
  assert n.shape == (B, T, N)
  out = ssmax_jax.dot_product_attention(q, k, v, bias, mask, s=s, implementation="xla")
  _, n_ref = attention_np(q, k, v, head_mask=mask)
  np.testing.assert_array_equal(np.asarray(n), n_ref)
  ref, _ = attention_np(q, k, v, multiplier_np("ssmax", n_ref, s=s), bias=bias, head_mask=mask)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  # A [T,S] mask broadcasts like jax.nn's.
  out2 = ssmax_jax.dot_product_attention(q, k, v, mask=mask[0, 0], implementation="xla")
  ref2, _ = attention_np(q, k, v, head_mask=mask[0, 0])
  np.testing.assert_allclose(out2, ref2, rtol=1e-5, atol=1e-5)
