"""The TPU (Pallas Mosaic) kernels (ssmax_jax/ops/attention/mosaic_tpu.py) on the shared cases,
run on CPU in TPU interpret mode, and their lowering for TPU.

Float32 tolerance: max |error| <= 1e-5 * max |reference| (the kernel's float32 matmuls run at
Precision.HIGHEST). bfloat16: 1e-2 forward, 2e-2 gradients, relative to the largest reference
magnitude on the same rounded inputs (the kernel feeds bf16 probabilities to the MXU, like any
TPU flash kernel). The lowering tests export to TPU (StableHLO with the Mosaic kernels inside)
without a TPU; Mosaic's own layout passes run only when a TPU compiles it.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from ssmax_jax.ops.attention import mosaic_tpu
from tests import attention_cases as ac
from tests.reference_np import allowed_mask_np

TOLS = {jnp.float32: (ac.F32_TOL, ac.F32_TOL), jnp.bfloat16: (1e-2, 2e-2)}


@functools.cache
def _fn(small, causal, window, scale):
  settings = mosaic_tpu.Settings(128, 128) if small else None
  run = functools.partial(mosaic_tpu.flash_attention, settings=settings,
                          interpret=pltpu.InterpretParams())
  return ac.out_and_grads(run, scale=scale, causal=causal, window=window)


def _check(case, x):
  tol_fwd, tol_grad = TOLS[case.dtype]
  scale = case.shape[-1] ** -0.5
  fn = _fn(case.small_blocks, case.causal, case.window, scale)
  return ac.check(fn, x, case.dtype, scale=scale, causal=case.causal, window=case.window,
                  tol_fwd=tol_fwd, tol_grad=tol_grad)


@pytest.mark.parametrize("case", ac.cases("mosaic_tpu"), ids=lambda c: c.name)
def test_forward_and_gradients(case):
  _check(case, ac.draw(case))


def test_fully_masked_rows_give_zeros_and_zero_gradients():
  # Batch 0: queries of segment 9 find no key, and negative positions none under causal.
  # Batch 1: no valid key at all (kv_len 0). ac.check asserts the zeros.
  case = ac.Case("dead_rows", (2, 140, 140, 2, 1, 64), causal=True, positions="arange",
                 segments="sorted", lengths=(140, 0), seed=7)
  x = ac.draw(case)
  q_seg = np.zeros((2, 140), np.int32)
  q_seg[0, 100:] = 9
  q_pos = x.q_pos.copy()
  q_pos[0, :3] = -1
  x = x._replace(q_pos=q_pos, q_seg=q_seg, kv_seg=np.zeros((2, 140), np.int32))
  assert not ac.allowed(x, causal=True, window=None)[0, 100:].any()
  _check(case, x)


def test_bad_arguments_raise_value_error():
  q = jnp.zeros((1, 8, 4, 64))
  k = jnp.zeros((1, 8, 3, 64))
  c = jnp.ones((1, 8, 4))
  kw = dict(scale=1.0, causal=False, window=None)
  with pytest.raises(ValueError, match="N % K"):
    mosaic_tpu.flash_attention(q, k, k, c, None, None, None, None, **kw)
  k = jnp.zeros((1, 8, 2, 64))
  with pytest.raises(ValueError, match="block_q"):
    mosaic_tpu.flash_attention(q, k, k, c, None, None, None, None,
                               settings=mosaic_tpu.Settings(block_q=100), **kw)
  with pytest.raises(ValueError, match="together"):
    mosaic_tpu.flash_attention(q, k, k, c, None, jnp.zeros((1, 8), jnp.int32), None, None, **kw)


def test_default_blocks_pad_little():
  pick = lambda length: mosaic_tpu.default_settings(64, length, length).block_q
  assert [pick(n) for n in (1, 300, 1000, 1024, 2048, 640)] == [128, 128, 512, 512, 512, 128]


# Seeded random sweep: few shapes (one compilation each), random contents and mask arrays.
SWEEPS = [ac.Case("causal_segments_h64", (1, 200, 300, 1, 1, 64), causal=True,
                  segments="sorted", small_blocks=True),
          ac.Case("window_gqa_h128", (1, 130, 260, 2, 1, 128), window=(40, 40)),
          ac.Case("bf16_decode_window", (1, 5, 400, 2, 1, 64), jnp.bfloat16, causal=True,
                  window=(100, 0))]
CASES_PER_SWEEP = 34


@pytest.mark.parametrize("case", SWEEPS, ids=lambda c: c.name)
def test_random_sweep(case):
  B, T, S = case.shape[:3]
  rng = np.random.default_rng(1234 + len(case.name))
  worst = np.zeros(5)
  for _ in range(CASES_PER_SWEEP):
    x = ac.draw(case, rng, logit_size=rng.uniform(0.1, 3.0))
    masks = ac.sweep_masks(rng, B, T, S, case.segments is not None)
    worst = np.maximum(worst, _check(case, x._replace(**dict(zip(
        ("q_pos", "q_seg", "kv_seg", "kv_len"), masks)))))
  print(f"\n{case.name}: {CASES_PER_SWEEP} cases, worst relative errors (out, q, k, v, c)",
        " ".join(f"{e:.1e}" for e in worst))


def test_block_classification_is_sound():
  """Skipped block pairs hold no allowed key; pairs run unmasked hold only allowed keys."""
  rng = np.random.default_rng(3)
  B, T, S, bq, bk = 3, 512, 640, 128, 128
  seen = {"skipped": 0, "full": 0, "partial": 0}
  for causal, window, segments in [(True, None, True), (False, (100, 30), False),
                                   (True, (200, 0), True), (False, None, True)]:
    cfg = mosaic_tpu._Static(scale=1.0, causal=causal, window=window, block_q=bq, block_k=bk,
                             groups=1, has_segments=segments, mask_lengths=True, interpret=False)
    q_pos, q_seg, kv_seg, kv_len = ac.sweep_masks(rng, B, T, S, segments)
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
