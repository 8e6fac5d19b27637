"""The public op against the float64 NumPy reference: every variant, every mask, gradients."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssmax_jax
from ssmax_jax import ops
from tests.reference_np import attention_np, multiplier_np

B, T, S, N, K, H = 2, 9, 9, 4, 2, 8


def _qkv(seed, t=T, s=S, n=N, k=K, h=H):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(B, t, n, h)).astype(np.float32)
  kk = rng.normal(size=(B, s, k, h)).astype(np.float32)
  v = rng.normal(size=(B, s, k, h)).astype(np.float32)
  return q, kk, v


SEG = np.array([[1, 1, 1, 2, 2, 2, 2, 3, 3], [5, 5, 7, 7, 7, 7, 7, 7, 7]])
# Each case: (op kwargs, reference mask kwargs).
MASK_CASES = {
    "none": ({}, {}),
    "causal": ({"is_causal": True}, {"causal": True}),
    "segments": ({"is_causal": True, "segment_ids": SEG},
                 {"causal": True, "q_seg": SEG, "kv_seg": SEG}),
    "segment_pair": ({"segment_ids": (SEG, SEG[:, ::-1])}, {"q_seg": SEG, "kv_seg": SEG[:, ::-1]}),
    "window_int": ({"local_window_size": 2}, {"window": 2}),
    "window_causal": ({"is_causal": True, "local_window_size": (3, 0)},
                      {"causal": True, "window": (3, 0)}),
    "kv_lengths": ({"is_causal": True, "key_value_seq_lengths": np.array([9, 4])},
                   {"causal": True, "kv_len": np.array([9, 4])}),
    "positions": ({"is_causal": True, "query_positions": np.array([[0, 2, 2, 5, 8, 8, 1, 3, 7]] * 2)},
                  {"causal": True, "q_pos": np.array([[0, 2, 2, 5, 8, 8, 1, 3, 7]] * 2)}),
    # Row 1 attends nothing past length 0 and segment 9 exists only among queries: empty rows.
    "fully_masked": ({"segment_ids": (np.array([[1] * 8 + [9]] * 2), np.ones((2, 9), int)),
                      "key_value_seq_lengths": np.array([9, 0])},
                     {"q_seg": np.array([[1] * 8 + [9]] * 2), "kv_seg": np.ones((2, 9), int),
                      "kv_len": np.array([9, 0])}),
}

VARIANT_ARGS = {
    "softmax": {},
    "ssmax": {"s": np.array([0.3, 0.5, 0.8, 1.2], np.float32)},
    "ssmax_bias": {"s": np.array([0.3, 0.5, 0.8, 1.2], np.float32),
                   "b": np.array([0.1, -0.2, 0.0, 0.4], np.float32)},
    "ssmax_fixed": {"s": 1.0},
    "qwen_logn": {"l_train": 4},
    "llama4_temperature": {"floor_scale": 3.0, "attn_scale": 0.5},
}


def _op_kwargs(variant, n):
  """How a user passes each variant: s/b directly, or a precomputed multiplier."""
  args = VARIANT_ARGS[variant]
  if variant == "softmax":
    return {}
  if variant in ("ssmax", "ssmax_bias"):
    return dict(args)
  return {"logit_multiplier": ssmax_jax.logit_multiplier(variant, n, num_heads=N, **args)}


@pytest.mark.parametrize("mask_name", list(MASK_CASES))
@pytest.mark.parametrize("variant", list(VARIANT_ARGS))
def test_forward_matches_float64_reference(variant, mask_name):
  op_mask, ref_mask = MASK_CASES[mask_name]
  q, k, v = _qkv(hash((variant, mask_name)) % 1000)
  n = ssmax_jax.attention_counts(q, k, **op_mask)
  out = ssmax_jax.dot_product_attention(q, k, v, **op_mask, **_op_kwargs(variant, n),
                                        implementation="xla")
  _, n_ref = attention_np(q, k, v, **ref_mask)
  np.testing.assert_array_equal(np.asarray(n), n_ref[..., 0])
  c = multiplier_np(variant, n_ref, **VARIANT_ARGS[variant])
  ref, _ = attention_np(q, k, v, c, **ref_mask)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  if mask_name == "fully_masked":
    assert np.all(np.asarray(out)[1] == 0) and np.all(np.asarray(out)[:, 8] == 0)


def _directional_check(f_jax, f_ref, args, seed, rtol=2e-4):
  """<grad f, u> against a central difference of the float64 reference along random u."""
  rng = np.random.default_rng(seed)
  grads = jax.grad(f_jax, argnums=tuple(range(len(args))))(*args)
  for i, (x, g) in enumerate(zip(args, grads)):
    u = rng.normal(size=np.shape(x))
    eps = 1e-6
    plus = [np.asarray(a, np.float64) for a in args]
    minus = [np.asarray(a, np.float64) for a in args]
    plus[i] = plus[i] + eps * u
    minus[i] = minus[i] - eps * u
    numeric = (f_ref(*plus) - f_ref(*minus)) / (2 * eps)
    analytic = float(np.sum(np.asarray(g, np.float64) * u))
    assert abs(analytic - numeric) <= rtol * (abs(numeric) + 1.0), (i, analytic, numeric)


@pytest.mark.parametrize("mask_name", ["causal", "segments", "window_causal", "fully_masked"])
def test_gradients_q_k_v_s_b(mask_name):
  op_mask, ref_mask = MASK_CASES[mask_name]
  q, k, v = _qkv(1)
  s, b = VARIANT_ARGS["ssmax_bias"]["s"], VARIANT_ARGS["ssmax_bias"]["b"]
  w = np.random.default_rng(2).normal(size=q.shape)
  _, n_ref = attention_np(q, k, v, **ref_mask)

  def f_jax(q, k, v, s, b):
    out = ssmax_jax.dot_product_attention(q, k, v, s=s, b=b, **op_mask, implementation="xla")
    return jnp.sum(out * w)

  def f_ref(q, k, v, s, b):
    c = multiplier_np("ssmax_bias", n_ref, s=s, b=b)
    return float(np.sum(attention_np(q, k, v, c, **ref_mask)[0] * w))

  _directional_check(f_jax, f_ref, (q, k, v, s, b), seed=3)


def test_gradient_logit_multiplier():
  q, k, v = _qkv(4)
  c = np.random.default_rng(5).uniform(0.5, 2.0, size=(B, T, N)).astype(np.float32)
  w = np.random.default_rng(6).normal(size=q.shape)

  def f_jax(c):
    return jnp.sum(ssmax_jax.dot_product_attention(q, k, v, logit_multiplier=c, is_causal=True,
                                                   implementation="xla") * w)

  def f_ref(c):
    return float(np.sum(attention_np(q, k, v, c, causal=True)[0] * w))

  _directional_check(f_jax, f_ref, (c,), seed=7)


def test_dense_mask_per_head_and_bias():
  q, k, v = _qkv(8)
  rng = np.random.default_rng(9)
  mask = rng.random((B, N, T, S)) < 0.6
  bias = rng.normal(size=(1, N, T, S)).astype(np.float32)
  s = VARIANT_ARGS["ssmax"]["s"]
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


def test_gqa_and_cross_attention_lengths():
  q, k, v = _qkv(10, t=5, s=11, n=6, k=3, h=16)
  s = np.linspace(0.2, 0.9, 6).astype(np.float32)
  out = ssmax_jax.dot_product_attention(q, k, v, s=s, key_value_seq_lengths=np.array([11, 7]))
  _, n_ref = attention_np(q, k, v, kv_len=np.array([11, 7]))
  ref, _ = attention_np(q, k, v, multiplier_np("ssmax", n_ref, s=s), kv_len=np.array([11, 7]))
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_query_seq_lengths_zero_padded_rows():
  q, k, v = _qkv(11)
  out = ssmax_jax.dot_product_attention(q, k, v, is_causal=True, query_seq_lengths=np.array([9, 3]))
  assert np.all(np.asarray(out)[1, 3:] == 0)
  ref = jax.nn.dot_product_attention(q, k, v, is_causal=True)
  np.testing.assert_allclose(np.asarray(out)[1, :3], np.asarray(ref)[1, :3], rtol=1e-5, atol=1e-6)


def test_softmax_equals_jax_nn():
  q, k, v = _qkv(12)
  for kw in ({}, {"is_causal": True}, {"is_causal": True, "local_window_size": (2, 0)},
             {"is_causal": True, "key_value_seq_lengths": np.array([9, 6])}):
    ours = ssmax_jax.dot_product_attention(q, k, v, **kw)
    theirs = jax.nn.dot_product_attention(q, k, v, **kw)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_decode_row_equals_full_forward():
  """One query at position p against a fixed-size cache equals row p of the full forward."""
  q, k, v = _qkv(13)
  s = VARIANT_ARGS["ssmax"]["s"]
  full = ssmax_jax.dot_product_attention(q, k, v, s=s, is_causal=True)
  for p in (0, 4, 8):
    row = ssmax_jax.dot_product_attention(q[:, p:p + 1], k, v, s=s, is_causal=True,
                                          query_positions=np.array([p]))
    np.testing.assert_allclose(row[:, 0], full[:, p], rtol=1e-5, atol=1e-6)


def test_jit_vmap_grad():
  q, k, v = _qkv(14)
  s = jnp.asarray(VARIANT_ARGS["ssmax"]["s"])
  f = lambda q, k, v, s: ssmax_jax.dot_product_attention(q, k, v, s=s, is_causal=True)
  eager = f(q, k, v, s)
  chex.assert_trees_all_close(jax.jit(f)(q, k, v, s), eager, rtol=1e-5, atol=1e-6)
  # vmap over an extra leading axis.
  stacked = jax.vmap(f, in_axes=(0, 0, 0, None))(q[None].repeat(3, 0), k[None].repeat(3, 0),
                                                 v[None].repeat(3, 0), s)
  chex.assert_trees_all_close(stacked[1], eager, rtol=1e-5, atol=1e-6)
  g = jax.jit(jax.grad(lambda s: f(q, k, v, s).sum()))(s)
  chex.assert_shape(g, (N,))
  chex.assert_tree_all_finite(g)


def test_bfloat16_within_tolerance():
  """bf16 inputs, float32 softmax: error is bounded by bf16 rounding of the output (2^-8)."""
  q, k, v = _qkv(15, t=64, s=64, h=32)
  s = VARIANT_ARGS["ssmax"]["s"]
  qb, kb, vb = (jnp.asarray(x, jnp.bfloat16) for x in (q, k, v))
  out = ssmax_jax.dot_product_attention(qb, kb, vb, s=s, is_causal=True)
  assert out.dtype == jnp.bfloat16
  _, n_ref = attention_np(q, k, v, causal=True)
  ref, _ = attention_np(*(np.asarray(x, np.float32) for x in (qb, kb, vb)),
                        multiplier_np("ssmax", n_ref, s=s), causal=True)
  np.testing.assert_allclose(np.asarray(out, np.float32), ref, rtol=2e-2, atol=2e-2)


def test_counts_closed_form_and_chunked_agree():
  q, k, _ = _qkv(16, t=1100, s=1100, h=4)
  seg = np.ones((B, 1100), int)  # segments force the chunked path; all equal ids = no effect
  kw = dict(is_causal=True, local_window_size=(300, 0), key_value_seq_lengths=np.array([1100, 700]))
  n_closed = ssmax_jax.attention_counts(q, k, **kw)
  n_chunked = ssmax_jax.attention_counts(q, k, segment_ids=seg, **kw)
  np.testing.assert_array_equal(n_closed, n_chunked)
  assert int(n_closed[0, 1099]) == 301 and int(n_closed[1, 1099]) == 0


@pytest.mark.parametrize("t,s", [(9, 9), (5, 9), (9, 5)])
def test_every_query_attends_only_when_the_counts_say_so(t, s):
  """The static rule that lets a backend skip zeroing empty rows never claims a row that is
  empty, and holds for the plain causal and unmasked cases the model uses."""
  from ssmax_jax.ops import masks
  cases = [dict(), dict(is_causal=True), dict(local_window_size=2),
           dict(is_causal=True, local_window_size=(3, 0)), dict(local_window_size=(0, 1)),
           dict(is_causal=True, key_value_seq_lengths=np.array([s, 0])),
           dict(is_causal=True, segment_ids=(np.ones((B, t), int), np.ones((B, s), int))),
           dict(mask=np.ones((1, 1, t, s), bool))]
  claimed = []
  for kw in cases:
    spec = masks.make_mask_spec((B, t, N, H), (B, s, K, H), kw.pop("mask", None), num_heads=N,
                                **kw)
    if masks.every_query_attends(spec):
      claimed.append(kw)
      assert int(jnp.min(masks.counts_from_spec(spec))) >= 1, kw
  assert dict() in claimed and dict(is_causal=True) in claimed
  assert (dict(local_window_size=2) in claimed) == (t <= s)


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
@pytest.mark.parametrize("kw", [dict(is_causal=True),  # every row attends: no zeroing pass
                                dict(is_causal=True, key_value_seq_lengths=np.array([7, 0]))])
def test_cudnn_matches_xla_with_ssmax(kw):
  """cuDNN (s·log n folded into q) against the XLA path: output, and gradients of q, k, v, s;
  a batch row with no keys comes back as zeros."""
  q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in _qkv(21, t=128, s=128, n=4, k=2, h=64))
  s = jnp.array([0.3, 0.5, 0.7, 0.9], jnp.float32)

  def loss(impl, q, k, v, s):
    out = ssmax_jax.dot_product_attention(q, k, v, s=s, implementation=impl, **kw)
    return jnp.sum(out.astype(jnp.float32) ** 2), out

  (_, out_c), g_c = jax.value_and_grad(lambda *a: loss("cudnn", *a), (0, 1, 2, 3),
                                       has_aux=True)(q, k, v, s)
  (_, out_x), g_x = jax.value_and_grad(lambda *a: loss("xla", *a), (0, 1, 2, 3),
                                       has_aux=True)(q, k, v, s)
  np.testing.assert_allclose(np.asarray(out_c, np.float32), np.asarray(out_x, np.float32),
                             atol=3e-2, rtol=3e-2)
  for a, b in zip(g_c, g_x):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(a, b, atol=5e-2 * np.abs(b).max(), rtol=0)
  if "key_value_seq_lengths" in kw:
    assert not np.any(np.asarray(out_c[1], np.float32))


def test_logit_multiplier_formulas():
  n = jnp.array([[1, 2, 10, 10000]])
  s = jnp.array([0.5, 2.0])
  np.testing.assert_allclose(ssmax_jax.logit_multiplier("ssmax", n, s=s)[0, 2],
                             [0.5 * np.log(10), 2.0 * np.log(10)], rtol=1e-6)
  np.testing.assert_allclose(ssmax_jax.logit_multiplier("softmax", n, num_heads=3),
                             np.ones((1, 4, 3)))
  np.testing.assert_allclose(ssmax_jax.logit_multiplier("qwen_logn", n, l_train=100)[0, :, 0],
                             [1, 1, 1, np.log(10000) / np.log(100)], rtol=1e-6)
  np.testing.assert_allclose(ssmax_jax.logit_multiplier("llama4_temperature", n)[0, :, 0],
                             [1, 1, 1, np.log(2) * 0.1 + 1], rtol=1e-6)
  np.testing.assert_allclose(ssmax_jax.default_s_init(1024), 0.1685, atol=1e-4)


BAD_INPUTS = [
    (dict(query=np.zeros((2, 4, 4))), "query"),
    (dict(key=np.zeros((3, 4, 2, 8)), value=np.zeros((3, 4, 2, 8))), "batch"),
    (dict(key=np.zeros((2, 4, 2, 4)), value=np.zeros((2, 4, 2, 4))), "head dim"),
    (dict(key=np.zeros((2, 4, 3, 8)), value=np.zeros((2, 4, 3, 8))), "N % K"),
    (dict(s=np.ones(3)), "s"),
    (dict(s=np.ones(4), b=np.ones(5)), "b"),
    (dict(b=np.ones(4)), "b was given without s"),
    (dict(s=1.0, logit_multiplier=np.ones((2, 4, 4))), "exclusive"),
    (dict(logit_multiplier=np.ones((2, 5, 4))), "logit_multiplier"),
    (dict(local_window_size=(-1, 2)), "local_window_size"),
    (dict(implementation="flash"), "implementation"),
    (dict(segment_ids=np.ones((2, 5), int)), "segment_ids"),
    (dict(key_value_seq_lengths=np.ones((3,), int)), "key_value_seq_lengths"),
    (dict(query_seq_lengths=np.ones((2, 1), int)), "query_seq_lengths"),
    (dict(query_positions=np.ones((3, 4), int)), "query_positions"),
    (dict(mask=np.ones((2, 4, 4, 5), bool)), "mask"),
    (dict(bias=np.ones((2, 4, 5, 4))), "bias"),
]


@pytest.mark.parametrize("kwargs,match", BAD_INPUTS)
def test_bad_inputs_raise_value_error(kwargs, match):
  args = dict(query=np.zeros((2, 4, 4, 8)), key=np.zeros((2, 4, 2, 8)), value=np.zeros((2, 4, 2, 8)))
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    ssmax_jax.dot_product_attention(**args)


def test_unknown_variant():
  with pytest.raises(ValueError, match="variant"):
    ssmax_jax.logit_multiplier("ssmax2", np.ones((1, 3), int))


@pytest.mark.parametrize("mask_name", ["causal", "segments", "positions"])
def test_pallas_implementation_matches_xla(mask_name):
  """The op's 'pallas' route (interpret mode on CPU) agrees with 'xla', gradients included."""
  op_mask, _ = MASK_CASES[mask_name]
  q, k, v = _qkv(20)
  s = jnp.asarray(VARIANT_ARGS["ssmax"]["s"])

  def loss(impl, q, s):
    out = ssmax_jax.dot_product_attention(q, k, v, s=s, **op_mask, implementation=impl)
    return jnp.sum(out * jnp.arange(H)), out

  (_, out_p), g_p = jax.value_and_grad(lambda *a: loss("pallas", *a), (0, 1), has_aux=True)(q, s)
  (_, out_x), g_x = jax.value_and_grad(lambda *a: loss("xla", *a), (0, 1), has_aux=True)(q, s)
  np.testing.assert_allclose(out_p, out_x, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(g_p, g_x, rtol=1e-4, atol=1e-5)


def test_pallas_rejects_dense_mask():
  q, k, v = _qkv(21)
  with pytest.raises(ValueError, match="pallas"):
    ssmax_jax.dot_product_attention(q, k, v, mask=np.ones((T, S), bool), implementation="pallas")


def test_norm_backend_choice_and_errors():
  from ssmax_jax.ops import norm
  rows = 4 * norm.rms_norm_gpu.BLOCK_ROWS
  assert norm.resolve_implementation("auto", (rows, 8), backend="gpu") == "pallas"
  assert norm.resolve_implementation("auto", (rows, 8), backend="cpu") == "xla"
  assert norm.resolve_implementation("auto", (rows + 1, 8), backend="gpu") == "xla"
  assert norm.resolve_implementation("xla", (rows + 1, 8)) == "xla"
  with pytest.raises(ValueError, match="needs whole rows on each device and a multiple of"):
    norm.resolve_implementation("pallas", (rows + 1, 8))
  with pytest.raises(ValueError, match="'pallas' is a GPU \\(Triton\\) kernel"):
    norm.resolve_implementation("pallas", (rows, 8), backend="tpu")
  with pytest.raises(ValueError, match="norm implementation='triton' is unknown"):
    norm.resolve_implementation("triton", (rows, 8))
  x = jnp.ones((2, rows, 8))
  with pytest.raises(ValueError, match=rf"delta has shape \({rows}, 8\), expected x's shape"):
    ops.add_rms_norm(x, x[0], jnp.ones(8), eps=1e-6, out_dtype=jnp.float32)
  # 'pallas' (interpret mode here) and 'xla' agree, with and without the residual add.
  k = jax.random.split(jax.random.key(0), 3)
  x, delta = (jax.random.normal(kk, (2, rows, 8)) for kk in k[:2])
  scale = jax.random.normal(k[2], (8,))
  for d in (delta, None):
    got = ops.add_rms_norm(x, d, scale, eps=1e-6, out_dtype=jnp.float32, implementation="pallas")
    want = ops.add_rms_norm(x, d, scale, eps=1e-6, out_dtype=jnp.float32, implementation="xla")
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[0], want[0])
