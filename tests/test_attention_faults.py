"""Faults and bad inputs of the op (ssmax_jax/ops/attention): masked non-finite inputs never
reach a result, the dtype policy, static-argument validation, empty shapes, and the cuDNN
check; then a seeded matrix of faults, each case either correct against the float64
reference or a ValueError naming the argument. Tiny shapes, XLA mostly; the kernels run (in
interpret mode) only the NaN-leak cases."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.cudnn import fused_attention_stablehlo as fused

import ssmax_jax
from ssmax_jax.ops import _dispatch
from ssmax_jax.ops.attention import api, cudnn, masks, mosaic_tpu, reference, triton
from tests.reference_np import allowed_mask_np, attention_np, multiplier_np

B, T, S, N, K, H = 2, 12, 16, 4, 2, 8
S_HEAD = np.array([0.4, 0.6, 0.8, 1.0], np.float32)


def _qkv(seed, t=T, s=S, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return tuple(rng.standard_normal(shape).astype(dtype)
               for shape in ((B, t, N, H), (B, s, K, H), (B, s, K, H)))


def _op(q, k, v, **kw):
  kw.setdefault("implementation", "xla")
  kw.setdefault("s", S_HEAD)
  return ssmax_jax.dot_product_attention(q, k, v, **kw)


def _expected(q, k, v, *, q_len=None, **mask):
  """float64 SSMax reference (c = s log n) and the allowed mask [B,T,S]."""
  _, n = attention_np(q, k, v, **mask)
  c = multiplier_np("ssmax", n, s=S_HEAD.astype(np.float64))
  out, _ = attention_np(q, k, v, c, **mask)
  if q_len is not None:
    out[np.arange(q.shape[1])[None, :] >= np.asarray(q_len)[:, None]] = 0
  return out, allowed_mask_np(B, q.shape[1], k.shape[1], **mask)


def _np_mask_kwargs(kw):
  """The op's masking kwargs in allowed_mask_np's names."""
  seg = kw.get("segment_ids")
  return dict(q_pos=kw.get("query_positions"), causal=kw.get("is_causal", False),
              window=kw.get("local_window_size"), kv_len=kw.get("key_value_seq_lengths"),
              q_seg=None if seg is None else seg[0], kv_seg=None if seg is None else seg[1])


# ------------------------------------------------------------------ masked NaN never leaks

# Packed documents (query docs 0,1; key docs 0,1,7: nobody asks for 7), causal, padded keys.
Q_SEG = np.repeat([[0] * 6 + [1] * 6], B, 0).astype(np.int32)
KV_SEG = np.repeat([[0] * 6 + [1] * 7 + [7] * 3], B, 0).astype(np.int32)
LEAK_KW = dict(is_causal=True, segment_ids=(Q_SEG, KV_SEG),
               key_value_seq_lengths=np.array([13, 9], np.int32),
               query_seq_lengths=np.array([12, 10], np.int32))


def _poison_unattended(q, k, v):
  """NaN/inf where no query may look: keys past the lengths, keys of doc 7, query rows past
  the query lengths."""
  k, v, q = k.copy(), v.copy(), q.copy()
  k[0, 13:], v[0, 13:] = np.nan, np.inf
  k[1, 9:], v[1, 9:] = np.inf, np.nan
  k[:, 13:15], v[:, 13:15] = np.nan, np.nan   # doc 7
  q[1, 10:] = np.nan
  return q, k, v


def _run_backend(backend):
  if backend == "mosaic_tpu":   # not reachable through the op on a CPU: call the kernel
    def f(q, k, v, kw):
      spec = masks.make_mask_spec(q.shape, k.shape, num_heads=N, **{
          key: val for key, val in kw.items() if key != "query_seq_lengths"})
      c = jnp.ones((B, q.shape[1], N), jnp.float32)
      return mosaic_tpu.flash_attention(q, k, v, c, None, spec.q_seg_BT, spec.kv_seg_BS,
                                        spec.kv_len_B, scale=0.3, causal=spec.causal,
                                        window=spec.window, interpret=True)
    return f
  impl = {"xla": "xla", "triton": "pallas"}[backend]
  return lambda q, k, v, kw: ssmax_jax.dot_product_attention(
      q, k, v, s=S_HEAD, scale=0.3, implementation=impl, **kw)


@pytest.mark.parametrize("backend", ["xla", "triton", "mosaic_tpu"])
def test_unattended_nan_reaches_no_output_or_gradient(backend):
  """Keys past kv lengths, keys of a document no query is in, and query rows past the query
  lengths hold NaN/inf: outputs and gradients equal those of clean inputs (zeros there)."""
  f = _run_backend(backend)
  kw = dict(LEAK_KW)
  if backend == "mosaic_tpu":
    kw.pop("query_seq_lengths")
  q, k, v = _qkv(1)
  bq, bk, bv = _poison_unattended(q, k, v)
  if backend == "mosaic_tpu":
    bq = q   # the kernel contract has no query lengths; the op zeroes those rows
  w = jnp.arange(H, dtype=jnp.float32)
  def loss(q, k, v):
    out = f(q, k, v, kw)
    return jnp.sum(out * w), out

  (_, out_c), g_clean = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(q, k, v)
  (_, out_b), g_bad = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(bq, bk, bv)
  assert np.isfinite(np.asarray(out_b)).all()
  np.testing.assert_allclose(out_b, out_c, rtol=0, atol=1e-6)
  for gc, gb in zip(g_clean, g_bad):
    assert np.isfinite(np.asarray(gb)).all()
    np.testing.assert_allclose(gb, gc, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", ["xla", "triton", "mosaic_tpu"])
def test_causal_future_nan_reaches_only_queries_that_attend_it(backend):
  """A NaN key and value at j, attended by later queries of its document: exactly the queries
  that attend j are NaN (the causal block holding j included), the rest equal clean inputs."""
  f = _run_backend(backend)
  kw = dict(is_causal=True, segment_ids=(Q_SEG, KV_SEG))
  q, k, v = _qkv(2)
  bk, bv = k.copy(), v.copy()
  bk[:, 8], bv[:, 8] = np.nan, np.nan        # doc 1, attended by queries 8..11
  out_c, out_b = np.asarray(f(q, k, v, kw)), np.asarray(f(q, bk, bv, kw))
  want_nan = np.zeros((B, T), bool)
  want_nan[:, 8:] = True
  got_nan = np.isnan(out_b).any(axis=(2, 3))
  np.testing.assert_array_equal(got_nan, want_nan)
  np.testing.assert_allclose(out_b[~want_nan], out_c[~want_nan], rtol=0, atol=1e-6)


def test_nan_value_in_a_row_past_query_lengths_is_dropped():
  q, k, v = _qkv(3)
  q[0, 5:] = np.nan
  out = _op(q, k, v, query_seq_lengths=np.array([5, 12]), is_causal=True)
  assert np.isfinite(np.asarray(out)).all() and not np.asarray(out)[0, 5:].any()


# ------------------------------------------------------------------ dtypes


@pytest.mark.parametrize("name", ["query", "key", "value"])
@pytest.mark.parametrize("dtype", [np.int32, np.bool_, np.complex64, np.uint8])
def test_non_floating_inputs_are_refused(name, dtype):
  args = dict(zip(("query", "key", "value"), _qkv(4)))
  args[name] = args[name].astype(dtype)
  with pytest.raises(ValueError, match=f"{name} has dtype"):
    ssmax_jax.dot_product_attention(**args)


def test_mixed_dtypes_are_refused():
  q, k, v = _qkv(5)
  with pytest.raises(ValueError, match="share one"):
    ssmax_jax.dot_product_attention(q, jnp.asarray(k, jnp.bfloat16), jnp.asarray(v, jnp.bfloat16))


def test_float64_is_computed_in_float64_by_xla_and_refused_by_the_kernels():
  with jax.enable_x64(True):
    q, k, v = (jnp.asarray(x, jnp.float64) for x in _qkv(6))
    out = ssmax_jax.dot_product_attention(q, k, v, is_causal=True)
    assert out.dtype == jnp.float64
    want, _ = attention_np(q, k, v, causal=True)
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="float64"):
      ssmax_jax.dot_product_attention(q, k, v, implementation="pallas")
    spec = masks.make_mask_spec(q.shape, k.shape, num_heads=N)
    call = dict(query=q, key=k, spec=spec, bias=None, default_positions=True)
    assert triton.unsupported_reason(platform="gpu", **call).startswith("float64")
    assert mosaic_tpu.unsupported_reason(platform="tpu", **call).startswith("float64")


@pytest.mark.parametrize("name,value", [("bias", np.ones((T, S), bool)),
                                        ("s", 1 + 1j), ("b", np.ones(N, np.complex64)),
                                        ("logit_multiplier", np.ones((B, T, N), bool)),
                                        ("scale", 0.5j), ("scale", True)])
def test_non_real_side_inputs_are_refused(name, value):
  kw = {name: value}
  if name == "b":
    kw["s"] = 1.0
  q, k, v = _qkv(7)
  with pytest.raises(ValueError, match=name):
    ssmax_jax.dot_product_attention(q, k, v, **kw)


# ------------------------------------------------------------------ static arguments

BAD_WINDOWS = [2.5, (3, 1, 2), "3", True, (2.7, 0.2), (np.float32(2), 1), (-1, 2), (1,), ()]
GOOD_WINDOWS = [(3, (3, 3)), (np.int64(3), (3, 3)), ((np.int32(2), 1), (2, 1)), ([2, 0], (2, 0)),
                (np.array([1, 4]), (1, 4)), (2 ** 40, (2 ** 30, 2 ** 30)),
                ((2 ** 31 - 1, 2 ** 31 - 1), (2 ** 30, 2 ** 30)), (0, (0, 0))]


@pytest.mark.parametrize("window", BAD_WINDOWS, ids=repr)
def test_bad_windows_are_refused(window):
  q, k, v = _qkv(8)
  with pytest.raises(ValueError, match="local_window_size"):
    _op(q, k, v, local_window_size=window)


@pytest.mark.parametrize("window,sides", GOOD_WINDOWS, ids=lambda x: repr(x)[:20])
def test_good_windows_are_clamped_and_correct(window, sides):
  assert masks.check_window(window) == sides
  q, k, v = _qkv(9)
  out = _op(q, k, v, local_window_size=window, is_causal=True)
  want, _ = _expected(q, k, v, causal=True, window=tuple(min(x, 10 ** 6) for x in sides))
  np.testing.assert_allclose(out, want, rtol=0, atol=1e-5)


def test_huge_window_agrees_between_xla_and_pallas():
  q, k, v = _qkv(10)
  kw = dict(local_window_size=(2 ** 31 - 1, 2 ** 31 - 1), query_positions=np.arange(T) + 3)
  np.testing.assert_allclose(_op(q, k, v, **kw), _op(q, k, v, implementation="pallas", **kw),
                             rtol=0, atol=1e-5)


@pytest.mark.parametrize("value", ["no", 1, 0, None, 1.0, np.array([True])])
def test_is_causal_must_be_a_bool(value):
  q, k, v = _qkv(11)
  with pytest.raises(ValueError, match="is_causal"):
    _op(q, k, v, is_causal=value)


def test_numpy_bool_is_causal_is_accepted():
  q, k, v = _qkv(12)
  np.testing.assert_array_equal(_op(q, k, v, is_causal=np.bool_(True)),
                                _op(q, k, v, is_causal=True))


@pytest.mark.parametrize("name", ["is_causal", "local_window_size"])
def test_traced_static_arguments_are_refused(name):
  q, k, v = _qkv(13)
  value = {"is_causal": True, "local_window_size": 3}[name]
  with pytest.raises(ValueError, match=f"{name} is a traced value.*static"):
    jax.jit(lambda x: _op(q, k, v, **{name: x}))(value)


def test_traced_scale_is_accepted_and_differentiable():
  q, k, v = _qkv(14)
  for impl in ("xla", "pallas"):
    got = jax.jit(lambda sc: _op(q, k, v, scale=sc, is_causal=True, implementation=impl))(0.7)
    np.testing.assert_allclose(got, _op(q, k, v, scale=0.7, is_causal=True), rtol=0, atol=1e-5)
  g = jax.grad(lambda sc: jnp.sum(_op(q, k, v, scale=sc, is_causal=True) ** 2))(0.7)
  eps = 1e-2
  fd = (jnp.sum(_op(q, k, v, scale=0.7 + eps, is_causal=True) ** 2)
        - jnp.sum(_op(q, k, v, scale=0.7 - eps, is_causal=True) ** 2)) / (2 * eps)
  np.testing.assert_allclose(g, fd, rtol=1e-2)


def test_non_finite_or_non_scalar_scale_is_refused():
  q, k, v = _qkv(15)
  for scale in (float("nan"), float("inf"), np.ones(2)):
    with pytest.raises(ValueError, match="scale"):
      _op(q, k, v, scale=scale)


# ------------------------------------------------------------------ shapes and values


@pytest.mark.parametrize("b,t,s", [(0, T, S), (B, 0, S), (B, T, 0), (0, 0, 0)])
def test_empty_sequences_give_empty_outputs(b, t, s):
  q = np.ones((b, t, N, H), np.float32)
  k = v = np.ones((b, s, K, H), np.float32)
  kw = dict(is_causal=True, key_value_seq_lengths=np.zeros((b,), np.int32),
            segment_ids=(np.zeros((b, t), np.int32), np.zeros((b, s), np.int32)))
  out = ssmax_jax.dot_product_attention(q, k, v, s=S_HEAD, **kw)
  assert out.shape == q.shape and not np.asarray(out).any()
  g = jax.grad(lambda q: ssmax_jax.dot_product_attention(q, k, v, **kw).sum())(q)
  assert g.shape == q.shape
  assert ssmax_jax.attention_counts(q, k, **kw).shape == (b, t)


@pytest.mark.parametrize("name,value", [
    ("query_positions", -np.ones(T, np.int32)), ("query_positions", np.full(T, 2 ** 30)),
    ("key_value_seq_lengths", np.array([-1, 3])), ("query_seq_lengths", np.array([4, -2]))])
def test_concrete_out_of_range_positions_and_lengths_are_refused(name, value):
  q, k, v = _qkv(16)
  with pytest.raises(ValueError, match=name):
    _op(q, k, v, **{name: value})


def test_lengths_past_the_sequence_mean_all_of_it():
  q, k, v = _qkv(17)
  np.testing.assert_allclose(
      _op(q, k, v, key_value_seq_lengths=np.array([2 ** 40, S + 5], np.int64)),
      _op(q, k, v), rtol=0, atol=1e-6)


# ------------------------------------------------------------------ the default choice and cuDNN


def test_jax_cudnn_check_refuses_odd_lengths_with_a_mask_on_cpu():
  """The check jax.nn raises on a GPU, called directly (it needs no GPU for shapes)."""
  q = jax.ShapeDtypeStruct((2, 300, 4, 64), jnp.bfloat16)
  k = jax.ShapeDtypeStruct((2, 513, 2, 64), jnp.bfloat16)
  with pytest.raises(NotImplementedError, match="Unsupported sequence length Q 300, KV 513"):
    fused.check_is_flash_attention(q, k, k, fused.AttentionLayout.BTNH.value, 90000, True, True)
  # A dense mask, padding by lengths, or neither: jax's training path counts its placeholder
  # bias as a bias, so each of them fails on the GPU (the lengths case did, on an H200).
  for kw in (dict(mask=np.ones((300, 513), bool)), dict(key_value_seq_lengths=[513, 400]), {}):
    spec = masks.make_mask_spec(q.shape, k.shape, num_heads=4, **kw)
    reason = cudnn.unsupported_reason(query=q, key=k, spec=spec, bias=None,
                                      default_positions=True, platform="gpu")
    assert "Unsupported sequence length" in reason, kw
  even = jax.ShapeDtypeStruct((2, 512, 2, 64), jnp.bfloat16)
  spec = masks.make_mask_spec(even.shape, even.shape, num_heads=2, is_causal=True)
  assert cudnn.unsupported_reason(query=even, key=even, spec=spec, bias=None,
                                  default_positions=True, platform="gpu") is None


def test_default_choice_passes_cudnn_over_where_its_check_refuses(monkeypatch):
  monkeypatch.setattr(_dispatch, "platform", lambda: "gpu")
  q = jax.ShapeDtypeStruct((2, 300, 4, 64), jnp.bfloat16)
  k = jax.ShapeDtypeStruct((2, 513, 2, 64), jnp.bfloat16)
  spec = masks.make_mask_spec(q.shape, k.shape, np.ones((300, 513), bool), num_heads=4)
  assert api._choose(None, q, k, spec, None, True) == "xla"
  with pytest.raises(ValueError, match="implementation='cudnn' cannot take.*Unsupported"):
    api._choose("cudnn", q, k, spec, None, True)
  for bad in (jnp.float32, jnp.float64):
    qf = jax.ShapeDtypeStruct((2, 256, 4, 64), bad)
    spec = masks.make_mask_spec(qf.shape, qf.shape, num_heads=4)
    assert cudnn.unsupported_reason(query=qf, key=qf, spec=spec, bias=None,
                                    default_positions=True, platform="gpu") is not None


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
@pytest.mark.parametrize("padding", ["lengths", "mask"])
def test_default_choice_runs_shapes_cudnn_refuses_on_gpu(padding):
  """Cross-attention T=300, S=513 with padded keys: implementation=None runs (forward and
  gradients) and agrees with 'xla'."""
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.standard_normal((2, 300, 4, 64)), jnp.bfloat16)
  k, v = (jnp.asarray(rng.standard_normal((2, 513, 2, 64)), jnp.bfloat16) for _ in range(2))
  lengths = np.array([513, 400], np.int32)
  kw = (dict(key_value_seq_lengths=lengths) if padding == "lengths" else
        dict(mask=(np.arange(513)[None, None, None, :] < lengths[:, None, None, None])))

  def loss(impl, q, k, v):
    out = ssmax_jax.dot_product_attention(q, k, v, s=S_HEAD, implementation=impl, **kw)
    return jnp.sum(out.astype(jnp.float32) ** 2), out

  (_, out), g = jax.value_and_grad(lambda *a: loss(None, *a), (0, 1, 2), has_aux=True)(q, k, v)
  (_, ref), g_ref = jax.value_and_grad(lambda *a: loss("xla", *a), (0, 1, 2), has_aux=True)(
      q, k, v)
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32),
                             atol=3e-2, rtol=3e-2)
  for a, b in zip(g, g_ref):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(a, b, atol=5e-2 * np.abs(b).max(), rtol=0)


# ------------------------------------------------------------------ the fault matrix

VALID_FAULTS = ("none", "nan_k_masked", "nan_v_masked", "inf_v_masked", "nan_kv_attended",
                "nan_q_past_lengths")
INVALID_FAULTS = {  # fault -> (kwargs or input change, the argument the ValueError names)
    "window_float": (dict(local_window_size=1.5), "local_window_size"),
    "window_triple": (dict(local_window_size=(1, 2, 3)), "local_window_size"),
    "window_str": (dict(local_window_size="2"), "local_window_size"),
    "window_bool": (dict(local_window_size=(True, 1)), "local_window_size"),
    "window_negative": (dict(local_window_size=(2, -3)), "local_window_size"),
    "causal_str": (dict(is_causal="no"), "is_causal"),
    "causal_int": (dict(is_causal=1), "is_causal"),
    "query_int": ("query", "query"),
    "key_bool": ("key", "key"),
    "value_complex": ("value", "value"),
    "positions_negative": (dict(query_positions=np.arange(T) - 1), "query_positions"),
    "positions_float": (dict(query_positions=np.arange(T) * 1.0), "query_positions"),
    "kv_lengths_negative": (dict(key_value_seq_lengths=np.array([-3, 4])), "key_value_seq_lengths"),
    "q_lengths_negative": (dict(query_seq_lengths=np.array([2, -1])), "query_seq_lengths"),
    "scale_complex": (dict(scale=1j), "scale"),
    "scale_nan": (dict(scale=float("nan")), "scale"),
    "bias_bool": (dict(bias=np.ones((T, S), bool)), "bias"),
    "mask_float": (dict(mask=np.ones((T, S), np.float32)), "mask"),
    "s_complex": (dict(s=np.ones(N, np.complex64)), "s"),
    "segments_float": (dict(segment_ids=(np.zeros((B, T)), np.zeros((B, S)))), "segment_ids"),
}
SEEDS = range(12)


def _random_masks(seed):
  """Random masking kwargs for one seed: causal, window, documents, lengths, positions."""
  rng = np.random.default_rng(1000 + seed)
  kw = {}
  if rng.random() < 0.6:
    kw["is_causal"] = True
  if rng.random() < 0.4:
    kw["local_window_size"] = (int(rng.integers(0, 6)), int(rng.integers(0, 6)))
  if rng.random() < 0.5:
    q_seg = np.sort(rng.integers(0, 3, (B, T)), 1).astype(np.int32)
    kv_seg = np.sort(rng.integers(0, 4, (B, S)), 1).astype(np.int32)
    kw["segment_ids"] = (q_seg, kv_seg)
  if rng.random() < 0.7:
    kw["key_value_seq_lengths"] = rng.integers(0, S + 1, B).astype(np.int32)
  if rng.random() < 0.4:
    kw["query_positions"] = (np.arange(T) + rng.integers(0, S - T + 1)).astype(np.int32)
  return kw, rng


MATRIX = [(seed, fault) for seed in SEEDS for fault in (*VALID_FAULTS, *INVALID_FAULTS)]


@pytest.mark.parametrize("seed,fault", MATRIX, ids=[f"{s}-{f}" for s, f in MATRIX])
def test_fault_matrix(seed, fault):
  kw, rng = _random_masks(seed)
  q, k, v = _qkv(seed)
  if fault in INVALID_FAULTS:
    change, name = INVALID_FAULTS[fault]
    args = dict(query=q, key=k, value=v)
    if isinstance(change, str):
      dtype = {"query": np.int32, "key": np.bool_, "value": np.complex64}[change]
      args[change] = args[change].astype(dtype)
    else:
      kw = {**kw, **change}
    with pytest.raises(ValueError, match=name):
      _op(args["query"], args["key"], args["value"], **kw)
    return

  mask_np = _np_mask_kwargs(kw)
  _, allowed = _expected(q, k, v, **mask_np)
  bq, bk, bv = q.copy(), k.copy(), v.copy()
  attended_any = allowed.any(1)                       # [B,S]: some query attends key j
  want_nan = np.zeros((B, T), bool)
  if fault in ("nan_k_masked", "nan_v_masked", "inf_v_masked"):
    target, value = {"nan_k_masked": (bk, np.nan), "nan_v_masked": (bv, np.nan),
                     "inf_v_masked": (bv, -np.inf)}[fault]
    bad = ~attended_any & (rng.random((B, S)) < 0.7)
    target[bad] = value
  elif fault == "nan_kv_attended":
    bad = attended_any & (rng.random((B, S)) < 0.2)
    bk[bad] = np.nan
    bv[bad] = np.nan
    want_nan = (allowed & bad[:, None, :]).any(-1)
  elif fault == "nan_q_past_lengths":
    q_len = rng.integers(0, T + 1, B)
    kw["query_seq_lengths"] = q_len
    bq[np.arange(T)[None, :] >= q_len[:, None]] = np.nan
  want, _ = _expected(q, k, v, q_len=kw.get("query_seq_lengths"), **mask_np)
  out = np.asarray(_op(bq, bk, bv, **kw))
  np.testing.assert_array_equal(np.isnan(out).any(axis=(2, 3)), want_nan)
  np.testing.assert_allclose(out[~want_nan], want[~want_nan], rtol=0,
                             atol=1e-5 * max(1.0, np.abs(want).max()))
  if fault != "nan_kv_attended":   # no query sees a bad input: gradients are clean ones
    loss = lambda q, k, v: jnp.sum(_op(q, k, v, **kw) * jnp.arange(H))
    g_clean = jax.grad(loss, (0, 1, 2))(q, k, v)
    g_bad = jax.grad(loss, (0, 1, 2))(bq, bk, bv)
    for gc, gb in zip(g_clean, g_bad):
      np.testing.assert_allclose(gb, gc, rtol=0, atol=1e-5)


def test_fault_matrix_size():
  valid = len(SEEDS) * len(VALID_FAULTS)
  assert len(MATRIX) >= 200 and len(MATRIX) - valid == len(SEEDS) * len(INVALID_FAULTS)


def test_xla_reference_on_float64_unchanged():
  """The reference module computes float64 when given float64 (x64), float32 otherwise."""
  q, k, v = (jnp.asarray(x) for x in _qkv(18))
  spec = masks.make_mask_spec(q.shape, k.shape, num_heads=N)
  assert reference.attention_xla(q, k, v, None, spec, scale=0.3).dtype == jnp.float32


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
def test_mosaic_gpu_causal_nan_stays_within_its_diagonal_block():
  """Hopper kernel (docs/variants.md): a NaN key/value at j reaches the queries >= j and at
  most the earlier queries of j's 128-row block; the blocks before it equal clean inputs."""
  from ssmax_jax.ops.attention import mosaic_gpu
  if not mosaic_gpu._on_hopper():
    pytest.skip("needs a Hopper GPU")
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((1, 512, 2, 64)), jnp.bfloat16) for _ in range(3))
  c = jnp.ones((1, 512, 2), jnp.float32)
  f = lambda k, v: mosaic_gpu.flash_attention(q, k, v, c, None, None, None, None, scale=0.125,
                                              causal=True, window=None)
  out_c = np.asarray(f(k, v), np.float32)
  out_b = np.asarray(f(k.at[0, 300].set(jnp.nan), v.at[0, 300].set(jnp.nan)), np.float32)
  assert np.isnan(out_b[0, 300:]).all()
  np.testing.assert_array_equal(out_b[0, :256], out_c[0, :256])
