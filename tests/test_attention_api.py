"""The public op (ssmax_jax/ops/attention/api.py): validation, the backend choice on each
platform, and the behaviour every backend shares (jax.nn equality, decode rows, jit/vmap/grad,
counts, multipliers); the 'pallas' route in interpret mode against 'xla'."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssmax_jax
from ssmax_jax.ops import _dispatch
from ssmax_jax.ops.attention import api, masks, mosaic_gpu
from tests import attention_cases as ac
from tests.reference_np import attention_np, multiplier_np

B, T, S, N, K, H = ac.OP_SHAPE

# The choice, pinned: (platform, Hopper?, dtype, H, T=S, masking kwargs, bias?, implementation)
# -> the backend that runs the call, or the start of the ValueError's message.
BF, F32 = jnp.bfloat16, jnp.float32
CHOICES = [
    ("cpu", False, BF, 64, 256, {}, False, None, "xla"),
    ("cpu", False, F32, 64, 256, {"is_causal": True}, False, "auto", "xla"),
    ("cpu", False, F32, 64, 256, {}, False, "pallas", "triton"),
    ("cpu", False, BF, 64, 256, {"mask": True}, False, "pallas", "error:pallas"),
    ("cpu", False, BF, 64, 256, {}, False, "cudnn", "error:cudnn"),
    ("cpu", False, BF, 64, 256, {"segment_ids": True}, False, "cudnn", "error:cudnn"),
    ("gpu", True, BF, 64, 256, {"is_causal": True}, False, None, "cudnn"),
    ("gpu", True, BF, 64, 256, {"is_causal": True, "local_window_size": (16, 0)}, False, None,
     "cudnn"),
    ("gpu", True, BF, 64, 256, {"is_causal": True, "key_value_seq_lengths": True}, False, None,
     "cudnn"),
    ("gpu", True, BF, 64, 256, {"mask": True}, False, None, "cudnn"),
    ("gpu", True, BF, 64, 256, {"is_causal": True, "segment_ids": True}, False, None, "triton"),
    ("gpu", True, BF, 64, 256, {"is_causal": True, "query_positions": True}, False, None,
     "triton"),
    ("gpu", True, BF, 256, 256, {"is_causal": True}, False, None, "triton"),
    ("gpu", True, BF, 100, 256, {}, False, None, "triton"),
    ("gpu", True, BF, 64, 256, {"local_window_size": (4, 4)}, False, None, "triton"),
    ("gpu", True, BF, 64, 200, {"local_window_size": (8, 0)}, False, None, "triton"),
    ("gpu", True, BF, 64, 256, {"local_window_size": (4, 4)}, True, None, "xla"),
    ("gpu", True, F32, 64, 256, {"is_causal": True}, False, None, "xla"),
    ("gpu", True, F32, 64, 256, {"is_causal": True}, False, "pallas", "triton"),
    ("gpu", True, BF, 64, 256, {"is_causal": True}, False, "pallas", "mosaic_gpu"),
    ("gpu", True, BF, 128, 256, {}, False, "pallas", "mosaic_gpu"),
    ("gpu", True, BF, 64, 256, {"key_value_seq_lengths": True}, False, "pallas", "triton"),
    ("gpu", True, BF, 64, 256, {}, True, "pallas", "error:pallas"),
    ("gpu", True, BF, 64, 256, {"query_positions": True}, False, "cudnn", "error:cudnn"),
    ("gpu", True, BF, 64, 256, {}, False, "xla", "xla"),
    ("gpu", False, BF, 64, 256, {"is_causal": True, "segment_ids": True}, False, None, "triton"),
    ("gpu", False, BF, 64, 256, {"is_causal": True}, False, "pallas", "triton"),
    ("tpu", False, BF, 64, 256, {"is_causal": True}, False, None, "mosaic_tpu"),
    ("tpu", False, F32, 64, 256, {}, False, None, "mosaic_tpu"),
    ("tpu", False, BF, 192, 256, {}, False, None, "mosaic_tpu"),
    ("tpu", False, BF, 64, 256, {"mask": True}, False, None, "xla"),
    ("tpu", False, BF, 64, 256, {}, True, "pallas", "error:pallas"),
    ("tpu", False, BF, 64, 256, {}, False, "cudnn", "error:cudnn"),
]


def _call(dtype, head_dim, length, kwargs, with_bias):
  """(query, key, spec, bias, default_positions) of a call with these arguments."""
  q = jax.ShapeDtypeStruct((2, length, 4, head_dim), dtype)
  k = jax.ShapeDtypeStruct((2, length, 2, head_dim), dtype)
  kwargs = dict(kwargs)
  fill = {"mask": np.ones((length, length), bool),
          "segment_ids": np.zeros((2, length), np.int32),
          "query_positions": np.arange(length, dtype=np.int32),
          "key_value_seq_lengths": np.full((2,), length, np.int32)}
  for name, value in fill.items():
    if kwargs.get(name) is True:
      kwargs[name] = value
  spec = masks.make_mask_spec(q.shape, k.shape, kwargs.pop("mask", None), num_heads=4, **kwargs)
  bias = jnp.zeros((length, length)) if with_bias else None
  return q, k, spec, bias, "query_positions" not in kwargs


@pytest.mark.parametrize("platform,hopper,dtype,head_dim,length,kwargs,bias,impl,want",
                         CHOICES)
def test_choice_is_pinned(monkeypatch, platform, hopper, dtype, head_dim, length, kwargs, bias,
                          impl, want):
  monkeypatch.setattr(_dispatch, "platform", lambda: platform)
  monkeypatch.setattr(mosaic_gpu, "_on_hopper", lambda: hopper)
  call = _call(dtype, head_dim, length, kwargs, bias)
  if want.startswith("error:"):
    with pytest.raises(ValueError, match=f"implementation='{want[6:]}' cannot take this call"):
      api._choose(impl, *call)
  else:
    assert api._choose(impl, *call) == want


@pytest.mark.parametrize("platform,hopper,impl,kwargs,module,function", [
    ("gpu", True, "pallas", {}, "mosaic_gpu", "flash_attention"),
    ("gpu", True, "pallas", {"segment_ids": True}, "triton", "flash_attention"),
    ("gpu", True, None, {}, "cudnn", "attention_cudnn"),
    ("tpu", False, None, {}, "mosaic_tpu", "flash_attention"),
])
def test_the_chosen_backend_runs(monkeypatch, platform, hopper, impl, kwargs, module, function):
  """dot_product_attention calls the backend the choice names, with the op's arguments."""
  monkeypatch.setattr(_dispatch, "platform", lambda: platform)
  monkeypatch.setattr(mosaic_gpu, "_on_hopper", lambda: hopper)
  calls = []

  def record(q, *args, **kw):
    calls.append(kw)
    return jnp.zeros(q.shape, q.dtype)

  monkeypatch.setattr(api._BACKENDS[module], function, record)
  q = jnp.ones((2, 256, 4, 64), jnp.bfloat16)
  k = jnp.ones((2, 256, 2, 64), jnp.bfloat16)
  seg = {"segment_ids": jnp.zeros((2, 256), jnp.int32)} if kwargs else {}
  out = ssmax_jax.dot_product_attention(q, k, k, s=jnp.ones(4), is_causal=True,
                                        implementation=impl, **seg)
  assert out.shape == q.shape and len(calls) == 1
  if function == "flash_attention":
    assert calls[0]["causal"] and calls[0]["interpret"] is False


def test_old_module_paths_still_import():
  from ssmax_jax.kernels import mosaic_gpu as old_mosaic_gpu
  from ssmax_jax.kernels import mosaic_tpu as old_mosaic_tpu
  from ssmax_jax.kernels import triton_gpu
  from ssmax_jax.ops import masks as old_masks
  from ssmax_jax.ops import variants, xla
  from ssmax_jax.ops.attention import triton
  assert old_masks.make_mask_spec is masks.make_mask_spec
  assert variants.VARIANTS == ssmax_jax.VARIANTS and callable(xla.attention_xla)
  assert triton_gpu.default_blocks(64, jnp.bfloat16)["fwd"] == triton.default_settings(64).fwd
  assert old_mosaic_gpu.Tiles(128, 2) == mosaic_gpu.default_settings(128)
  assert callable(old_mosaic_tpu.flash_attention)


def test_gqa_and_cross_attention_lengths():
  q, k, v = ac.qkv(10, t=5, s=11, n=6, k=3, h=16)
  s = np.linspace(0.2, 0.9, 6).astype(np.float32)
  out = ssmax_jax.dot_product_attention(q, k, v, s=s, key_value_seq_lengths=np.array([11, 7]))
  _, n_ref = attention_np(q, k, v, kv_len=np.array([11, 7]))
  ref, _ = attention_np(q, k, v, multiplier_np("ssmax", n_ref, s=s), kv_len=np.array([11, 7]))
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_query_seq_lengths_zero_padded_rows():
  q, k, v = ac.qkv(11)
  out = ssmax_jax.dot_product_attention(q, k, v, is_causal=True, query_seq_lengths=np.array([9, 3]))
  assert np.all(np.asarray(out)[1, 3:] == 0)
  ref = jax.nn.dot_product_attention(q, k, v, is_causal=True)
  np.testing.assert_allclose(np.asarray(out)[1, :3], np.asarray(ref)[1, :3], rtol=1e-5, atol=1e-6)


def test_softmax_equals_jax_nn():
  q, k, v = ac.qkv(12)
  for kw in ({}, {"is_causal": True}, {"is_causal": True, "local_window_size": (2, 0)},
             {"is_causal": True, "key_value_seq_lengths": np.array([9, 6])}):
    ours = ssmax_jax.dot_product_attention(q, k, v, **kw)
    theirs = jax.nn.dot_product_attention(q, k, v, **kw)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_decode_row_equals_full_forward():
  """One query at position p against a fixed-size cache equals row p of the full forward."""
  q, k, v = ac.qkv(13)
  s = ac.VARIANT_ARGS["ssmax"]["s"]
  full = ssmax_jax.dot_product_attention(q, k, v, s=s, is_causal=True)
  for p in (0, 4, 8):
    row = ssmax_jax.dot_product_attention(q[:, p:p + 1], k, v, s=s, is_causal=True,
                                          query_positions=np.array([p]))
    np.testing.assert_allclose(row[:, 0], full[:, p], rtol=1e-5, atol=1e-6)


def test_jit_vmap_grad():
  q, k, v = ac.qkv(14)
  s = jnp.asarray(ac.VARIANT_ARGS["ssmax"]["s"])
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
  q, k, v = ac.qkv(15, t=64, s=64, h=32)
  s = ac.VARIANT_ARGS["ssmax"]["s"]
  qb, kb, vb = (jnp.asarray(x, jnp.bfloat16) for x in (q, k, v))
  out = ssmax_jax.dot_product_attention(qb, kb, vb, s=s, is_causal=True)
  assert out.dtype == jnp.bfloat16
  _, n_ref = attention_np(q, k, v, causal=True)
  ref, _ = attention_np(*(np.asarray(x, np.float32) for x in (qb, kb, vb)),
                        multiplier_np("ssmax", n_ref, s=s), causal=True)
  np.testing.assert_allclose(np.asarray(out, np.float32), ref, rtol=2e-2, atol=2e-2)


def test_counts_closed_form_and_chunked_agree():
  q, k, _ = ac.qkv(16, t=1100, s=1100, h=4)
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
    (dict(implementation="triton"), r"implementation='triton' is unknown; .*'xla', 'cudnn', "
                                    r"'pallas'"),
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


def test_auto_is_an_alias_of_none():
  q, k, v = ac.qkv(17)
  np.testing.assert_array_equal(
      ssmax_jax.dot_product_attention(q, k, v, is_causal=True, implementation="auto"),
      ssmax_jax.dot_product_attention(q, k, v, is_causal=True))


def test_unknown_variant():
  with pytest.raises(ValueError, match="variant"):
    ssmax_jax.logit_multiplier("ssmax2", np.ones((1, 3), int))


@pytest.mark.parametrize("mask_name", ["causal", "segments", "positions"])
def test_pallas_implementation_matches_xla(mask_name):
  """The op's 'pallas' route (interpret mode on CPU) agrees with 'xla', gradients included."""
  op_mask, _ = ac.OP_MASKS[mask_name]
  q, k, v = ac.qkv(20)
  s = jnp.asarray(ac.VARIANT_ARGS["ssmax"]["s"])

  def loss(impl, q, s):
    out = ssmax_jax.dot_product_attention(q, k, v, s=s, **op_mask, implementation=impl)
    return jnp.sum(out * jnp.arange(H)), out

  (_, out_p), g_p = jax.value_and_grad(lambda *a: loss("pallas", *a), (0, 1), has_aux=True)(q, s)
  (_, out_x), g_x = jax.value_and_grad(lambda *a: loss("xla", *a), (0, 1), has_aux=True)(q, s)
  np.testing.assert_allclose(out_p, out_x, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(g_p, g_x, rtol=1e-4, atol=1e-5)


def test_pallas_rejects_dense_mask():
  q, k, v = ac.qkv(21)
  with pytest.raises(ValueError, match="pallas"):
    ssmax_jax.dot_product_attention(q, k, v, mask=np.ones((T, S), bool), implementation="pallas")
