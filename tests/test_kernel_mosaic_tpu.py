"""The TPU (Pallas Mosaic) flash-attention kernel, run on CPU in TPU interpret mode.

Forward outputs are held to the float64 NumPy reference, gradients (q, k, v, c) to jax.grad of a
plain-jnp attention written here, evaluated in float64. Float32 tolerance: max |error| <=
1e-5 * max |reference| (the kernel's float32 matmuls run at Precision.HIGHEST; observed <= 8e-6).
bfloat16: 1e-2 forward, 2e-2 gradients (observed up to 3e-3, and 1.2e-2 for c), relative to the
largest reference magnitude on the same rounded inputs (the kernel feeds bf16 probabilities to
the MXU, like any TPU flash kernel). The lowering tests export to TPU (StableHLO with the Mosaic
kernels inside) without a TPU; Mosaic's own layout passes run only when a TPU compiles it.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from ssmax_jax.kernels import mosaic_tpu
from tests.reference_np import allowed_mask_np, attention_np

F32_TOL, BF16_FWD_TOL, BF16_GRAD_TOL = 1e-5, 1e-2, 2e-2


def _attention_jnp(q, k, v, c, q_pos, q_seg, kv_seg, kv_len, *, scale, causal, window):
  """Dense attention with the kernel's masks, in c's dtype (float64: the gradient reference)."""
  B, T, N, H = q.shape
  S, K = k.shape[1:3]
  q, k, v = (x.astype(c.dtype) for x in (q, k, v))
  q_BTKGH = q.reshape(B, T, K, N // K, H)
  logits = jnp.einsum("btkgh,bskh->bkgts", q_BTKGH, k, precision="highest").reshape(B, N, T, S)
  logits = logits * scale * jnp.transpose(c, (0, 2, 1))[..., None]
  key = jnp.arange(S)[None, None, :]
  pos = (jnp.arange(T)[None] if q_pos is None else q_pos)[:, :, None]
  ok = jnp.ones((B, T, S), bool)
  if causal:
    ok &= key <= pos
  if window is not None:
    ok &= (key >= pos - window[0]) & (key <= pos + window[1])
  if q_seg is not None:
    ok &= q_seg[:, :, None] == kv_seg[:, None, :]
  if kv_len is not None:
    ok &= key < kv_len[:, None, None]
  ok = ok[:, None]
  logits = jnp.where(ok, logits, -1e30)
  unnorm = jnp.where(ok, jnp.exp(logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True))), 0)
  denom = unnorm.sum(-1, keepdims=True)
  probs = unnorm / jnp.where(denom > 0, denom, 1.0)
  out = jnp.einsum("bkgts,bskh->btkgh", probs.reshape(B, K, N // K, T, S), v, precision="highest")
  return out.reshape(B, T, N, H)


def _kernel(q, k, v, c, q_pos, q_seg, kv_seg, kv_len, *, blocks=(None, None), **kw):
  return mosaic_tpu.flash_attention(q, k, v, c, q_pos, q_seg, kv_seg, kv_len, block_q=blocks[0],
                                    block_k=blocks[1], interpret=pltpu.InterpretParams(), **kw)


def _out_and_grads(attention, **kw):
  """(q, k, v, c, masks..., w) -> (out, (dq, dk, dv, dc)): gradients of sum(out * w)."""
  def fn(q, k, v, c, q_pos, q_seg, kv_seg, kv_len, w):
    out, vjp = jax.vjp(lambda *x: attention(*x, q_pos, q_seg, kv_seg, kv_len, **kw), q, k, v, c)
    return out, vjp(w.astype(out.dtype))
  return jax.jit(fn)


def _reference_grads(grad_fn, q, k, v, c, q_pos, q_seg, kv_seg, kv_len, w):
  """Gradients of the jnp reference in float64 (inputs rounded as the kernel sees them)."""
  with jax.enable_x64(True):
    f64 = lambda x: jnp.asarray(np.asarray(jnp.asarray(x, jnp.float32), np.float64))
    i32 = lambda x: None if x is None else jnp.asarray(x, jnp.int32)
    _, grads = grad_fn(f64(q), f64(k), f64(v), f64(c), i32(q_pos), i32(q_seg), i32(kv_seg),
                       i32(kv_len), f64(w))
    return [np.asarray(g) for g in grads]


def _rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)


def _draw(rng, B, T, S, N, K, H, dtype, *, logit_size=1.0):
  q = rng.standard_normal((B, T, N, H)) * logit_size
  k = rng.standard_normal((B, S, K, H))
  v = rng.standard_normal((B, S, K, H))
  q, k, v = (jnp.asarray(x, dtype) for x in (q, k, v))
  c = jnp.asarray(rng.uniform(-0.5, 3.0, (B, T, N)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((B, T, N, H)), dtype)  # the output cotangent
  return q, k, v, c, w


def _reference_np(q, k, v, c, q_pos, q_seg, kv_seg, kv_len, *, scale, causal, window):
  f64 = lambda x: None if x is None else np.asarray(jnp.asarray(x, jnp.float32), np.float64)
  out, _ = attention_np(f64(q), f64(k), f64(v), f64(c), scale=scale, q_pos=q_pos, causal=causal,
                        window=window, q_seg=q_seg, kv_seg=kv_seg, kv_len=kv_len)
  return out


# ----------------------------------------------------------------------------------------------
# Fixed cases.

CASES = {
    # name: (B, T, S, N, K, H, dtype, causal, window, q_pos kind, segments, kv_len)
    "causal_gqa_ragged_h64": (1, 300, 300, 4, 2, 64, jnp.float32, True, None, "arange", False,
                              None),
    "full_h128_segments_lengths": (2, 130, 300, 2, 1, 128, jnp.float32, False, None, "arange",
                                   True, (300, 77)),
    "window_chunked_prefill": (1, 100, 260, 2, 2, 64, jnp.float32, True, (32, 8), "suffix", False,
                               None),
    "window_bidirectional": (1, 150, 150, 2, 1, 128, jnp.float32, False, (20, 20), None, False,
                             None),
    "decode_one_query": (2, 1, 300, 4, 1, 64, jnp.float32, True, None, "decode", False, (300, 180)),
    "bf16_causal_gqa_h128": (1, 260, 260, 4, 2, 128, jnp.bfloat16, True, None, "arange", False,
                             None),
}


# 128 blocks where several blocks per side exercise skipped, full (unmasked) and partial blocks.
SMALL_BLOCKS = {"causal_gqa_ragged_h64": (128, 128), "causal_segments_h64": (128, 128)}


def _masks(rng, kind, B, T, S, segments, kv_len):
  if kind is None:  # the kernel's default, arange(T)
    q_pos = None
  elif kind == "arange":
    q_pos = np.broadcast_to(np.arange(T), (B, T))
  elif kind == "suffix":  # the last T of S positions, as in chunked prefill
    q_pos = np.broadcast_to(np.arange(S - T, S), (B, T))
  else:  # decode: one query per batch row, at its own position
    q_pos = np.array([[S - 1], [S // 2]])[:B]
  q_seg = kv_seg = None
  if segments:
    q_seg = np.sort(rng.integers(0, 3, (B, T)), axis=1)
    kv_seg = np.sort(rng.integers(0, 3, (B, S)), axis=1)
  lens = None if kv_len is None else np.asarray(kv_len, np.int32)
  as32 = lambda x: None if x is None else jnp.asarray(x, jnp.int32)
  return as32(q_pos), as32(q_seg), as32(kv_seg), as32(lens)


@pytest.mark.parametrize("name", list(CASES))
def test_forward_and_gradients(name):
  B, T, S, N, K, H, dtype, causal, window, kind, segments, kv_len = CASES[name]
  rng = np.random.default_rng(len(name))
  q, k, v, c, w = _draw(rng, B, T, S, N, K, H, dtype)
  masks = _masks(rng, kind, B, T, S, segments, kv_len)
  kw = dict(scale=H ** -0.5, causal=causal, window=window)
  bf16 = dtype == jnp.bfloat16

  kernel = functools.partial(_kernel, blocks=SMALL_BLOCKS.get(name, (None, None)))
  out, grads = _out_and_grads(kernel, **kw)(q, k, v, c, *masks, w)
  want = _reference_grads(_out_and_grads(_attention_jnp, **kw), q, k, v, c, *masks, w)
  for got, x in zip((out, *grads), (q, q, k, v, c)):
    assert got.shape == x.shape and got.dtype == x.dtype
  np_masks = [None if m is None else np.asarray(m) for m in masks]
  out_err = _rel_err(out, _reference_np(q, k, v, c, *np_masks, **kw))
  grad_errs = [_rel_err(got_g, want_g) for got_g, want_g in zip(grads, want)]
  print(f"\n{name}: out {out_err:.1e}, dq dk dv dc", " ".join(f"{e:.1e}" for e in grad_errs))
  assert out_err <= (BF16_FWD_TOL if bf16 else F32_TOL)
  assert max(grad_errs) <= (BF16_GRAD_TOL if bf16 else F32_TOL)


def test_fully_masked_rows_give_zeros_and_zero_gradients():
  B, T, S, N, K, H = 2, 140, 140, 2, 1, 64
  rng = np.random.default_rng(7)
  q, k, v, c, w = _draw(rng, B, T, S, N, K, H, jnp.float32)
  # Batch 0: queries of segment 9 find no key. Batch 1: no valid key at all (kv_len 0).
  q_seg = np.zeros((B, T), np.int32)
  q_seg[0, 100:] = 9
  kv_seg = np.zeros((B, S), np.int32)
  kv_len = np.array([S, 0], np.int32)
  q_pos = np.broadcast_to(np.arange(T), (B, T)).astype(np.int32)
  q_pos[0, :3] = -1  # causal: a negative position attends nothing
  masks = tuple(jnp.asarray(x) for x in (q_pos, q_seg, kv_seg, kv_len))
  kw = dict(scale=0.125, causal=True, window=None)

  out, (dq, dk, dv, dc) = _out_and_grads(_kernel, **kw)(q, k, v, c, *masks, w)
  dead = np.zeros((B, T), bool)
  dead[0, 100:] = dead[0, :3] = dead[1] = True
  np.testing.assert_array_equal(np.asarray(out)[dead], 0.0)
  assert _rel_err(out, _reference_np(q, k, v, c, q_pos, q_seg, kv_seg, kv_len, **kw)) <= F32_TOL
  np.testing.assert_array_equal(np.asarray(dq)[dead], 0.0)
  np.testing.assert_array_equal(np.asarray(dc)[dead], 0.0)
  np.testing.assert_array_equal(np.asarray(dk)[1], 0.0)  # batch 1 has no attended key
  np.testing.assert_array_equal(np.asarray(dv)[1], 0.0)
  want = _reference_grads(_out_and_grads(_attention_jnp, **kw), q, k, v, c, *masks, w)
  for got_g, want_g in zip((dq, dk, dv, dc), want):
    assert _rel_err(got_g, want_g) <= F32_TOL


def test_bad_arguments_raise_value_error():
  q = jnp.zeros((1, 8, 4, 64))
  k = jnp.zeros((1, 8, 3, 64))
  c = jnp.ones((1, 8, 4))
  kw = dict(scale=1.0, causal=False, window=None)
  with pytest.raises(ValueError, match="N % K"):
    mosaic_tpu.flash_attention(q, k, k, c, None, None, None, None, **kw)
  k = jnp.zeros((1, 8, 2, 64))
  with pytest.raises(ValueError, match="block_q"):
    mosaic_tpu.flash_attention(q, k, k, c, None, None, None, None, block_q=100, **kw)
  with pytest.raises(ValueError, match="together"):
    mosaic_tpu.flash_attention(q, k, k, c, None, jnp.zeros((1, 8), jnp.int32), None, None, **kw)


# ----------------------------------------------------------------------------------------------
# Seeded random sweep: few shapes (one compilation each), random contents and mask arrays.

BUCKETS = {
    # name: (B, T, S, N, K, H, dtype, causal, window, segments)
    "causal_segments_h64": (1, 200, 300, 1, 1, 64, jnp.float32, True, None, True),
    "window_gqa_h128": (1, 130, 260, 2, 1, 128, jnp.float32, False, (40, 40), False),
    "bf16_decode_window": (1, 5, 400, 2, 1, 64, jnp.bfloat16, True, (100, 0), False),
}
CASES_PER_BUCKET = 34


def _random_masks(rng, B, T, S, segments):
  start = rng.integers(-20, S, (B, 1))
  q_pos = start + np.arange(T)
  if rng.random() < 0.3:  # positions need not be sorted (e.g. permuted packing)
    q_pos = rng.permutation(q_pos.T).T
  kv_len = rng.integers(0, S + 1, (B,))
  if rng.random() < 0.5:
    kv_len[:] = S
  q_seg = kv_seg = None
  if segments:
    num_segments = rng.integers(1, 5)
    q_seg = np.sort(rng.integers(0, num_segments, (B, T)), axis=1)
    kv_seg = np.sort(rng.integers(0, num_segments, (B, S)), axis=1)
  return tuple(None if x is None else np.asarray(x, np.int32)
               for x in (q_pos, q_seg, kv_seg, kv_len))


@pytest.mark.parametrize("bucket", list(BUCKETS))
def test_random_sweep(bucket):
  B, T, S, N, K, H, dtype, causal, window, segments = BUCKETS[bucket]
  kw = dict(scale=H ** -0.5, causal=causal, window=window)
  kernel = functools.partial(_kernel, blocks=SMALL_BLOCKS.get(bucket, (None, None)))
  run_kernel = _out_and_grads(kernel, **kw)
  run_reference = _out_and_grads(_attention_jnp, **kw)
  bf16 = dtype == jnp.bfloat16
  rng = np.random.default_rng(1234 + len(bucket))
  worst = dict.fromkeys(["out", "q", "k", "v", "c"], 0.0)
  for case in range(CASES_PER_BUCKET):
    q, k, v, c, w = _draw(rng, B, T, S, N, K, H, dtype, logit_size=rng.uniform(0.1, 3.0))
    masks = _random_masks(rng, B, T, S, segments)
    jmasks = [None if m is None else jnp.asarray(m) for m in masks]
    out, grads = run_kernel(q, k, v, c, *jmasks, w)
    err = _rel_err(out, _reference_np(q, k, v, c, *masks, **kw))
    assert err <= (BF16_FWD_TOL if bf16 else F32_TOL), (case, "forward", err)
    want = _reference_grads(run_reference, q, k, v, c, *masks, w)
    largest = max(np.abs(g).max() for g in want)
    for name, got_g, want_g in zip("qkvc", grads, want):
      # An all-zero reference (every query attends at most one key, so the softmax has no
      # gradient) is held relative to the case's largest gradient instead.
      g_err = (np.abs(np.asarray(got_g, np.float64)).max() / max(largest, 1e-30)
               if not np.any(want_g) else _rel_err(got_g, want_g))
      assert g_err <= (BF16_GRAD_TOL if bf16 else F32_TOL), (case, name, g_err)
      worst[name] = max(worst[name], g_err)
    worst["out"] = max(worst["out"], err)
  print(f"\n{bucket}: {CASES_PER_BUCKET} cases, worst relative errors",
        {name: f"{e:.1e}" for name, e in worst.items()})


def test_block_classification_is_sound():
  """Skipped block pairs hold no allowed key; pairs run unmasked hold only allowed keys."""
  rng = np.random.default_rng(3)
  B, T, S, bq, bk = 3, 512, 640, 128, 128
  seen = {"skipped": 0, "full": 0, "partial": 0}
  for causal, window, segments in [(True, None, True), (False, (100, 30), False),
                                   (True, (200, 0), True), (False, None, True)]:
    cfg = mosaic_tpu._Config(scale=1.0, causal=causal, window=window, block_q=bq, block_k=bk,
                             groups=1, has_segments=segments, mask_lengths=True, interpret=False)
    q_pos, q_seg, kv_seg, kv_len = _random_masks(rng, B, T, S, segments)
    if not segments:
      q_seg, kv_seg = np.zeros((B, T), np.int32), np.zeros((B, S), np.int32)
    sc = mosaic_tpu._scalars(cfg, *(jnp.asarray(x) for x in (q_pos, q_seg, kv_seg, kv_len)))
    allowed = np.zeros((B, T, S), bool)
    for b in range(B):  # reference_np's mask, one batch row at a time
      allowed[b] = allowed_mask_np(1, T, S, q_pos=q_pos[b:b + 1], causal=causal, window=window,
                                   q_seg=q_seg[b:b + 1], kv_seg=kv_seg[b:b + 1],
                                   kv_len=kv_len[b:b + 1])[0]
    nq, nk = T // bq, S // bk
    for b in range(B):
      for i in range(nq):
        for j in range(nk):
          run, full = (bool(x) for x in mosaic_tpu._classify(cfg, sc, b, i, j, nq, nk))
          block = allowed[b, i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
          if not run:
            assert not block.any(), (b, i, j)
          elif full:
            assert block.all(), (b, i, j)
          seen["skipped" if not run else "full" if full else "partial"] += 1
  print("\nblock pairs:", seen)
  assert min(seen.values()) > 0, seen


# ----------------------------------------------------------------------------------------------
# Lowering to TPU without a TPU: block shapes, layouts of the BlockSpecs, scalar prefetch.

LOWERINGS = {
    "causal_h128_bf16": (1, 1024, 1024, 8, 8, 128, jnp.bfloat16, True, None, False, False),
    "gqa_h64_segments_window_lengths": (2, 1000, 1000, 8, 2, 64, jnp.bfloat16, True, (256, 0),
                                        True, True),
    "decode_h64_f32": (1, 1, 4096, 8, 8, 64, jnp.float32, True, None, False, True),
    "h256_bidirectional_window": (1, 2048, 2048, 4, 4, 256, jnp.bfloat16, False, (128, 128),
                                  False, False),
}


@pytest.mark.parametrize("name", list(LOWERINGS))
def test_exports_for_tpu(name):
  B, T, S, N, K, H, dtype, causal, window, segments, lengths = LOWERINGS[name]
  sds = jax.ShapeDtypeStruct
  i32 = jnp.int32
  args = [sds((B, T, N, H), dtype), sds((B, S, K, H), dtype), sds((B, S, K, H), dtype),
          sds((B, T, N), jnp.float32), sds((B, T), i32),
          sds((B, T), i32) if segments else None, sds((B, S), i32) if segments else None,
          sds((B,), i32) if lengths else None]

  def forward(q, k, v, c, q_pos, q_seg, kv_seg, kv_len):
    return mosaic_tpu.flash_attention(q, k, v, c, q_pos, q_seg, kv_seg, kv_len, scale=H ** -0.5,
                                      causal=causal, window=window)

  def loss(*a):
    return forward(*a).astype(jnp.float32).sum()

  grads = jax.grad(loss, argnums=(0, 1, 2, 3))
  for fn, kernels in ((forward, 1), (grads, 3)):
    exported = jax.export.export(jax.jit(fn), platforms=["tpu"])(*args)
    assert exported.platforms == ("tpu",)
    assert exported.mlir_module().count("tpu_custom_call") == kernels
