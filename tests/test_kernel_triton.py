"""The GPU (Pallas Triton) flash-attention kernel: interpret mode on CPU, compiled on a GPU.

Forward outputs are held to the float64 NumPy reference; gradients (q, k, v, c) to jax.grad of
a plain-jnp float64 attention written here. Tolerances are relative to the largest reference
magnitude: float32 1e-5 (the kernel's dots run at Precision.HIGHEST, i.e. IEEE float32 and not
TF32 on the GPU), plus 1e-6 absolute on gradients: dS = P*(dP - D) subtracts terms of size
|dO||V| (about 8 here) and rounds at ~1e-6 even when the gradient itself is tiny; bfloat16 2e-2 forward and 4e-2 gradients (probabilities and dS are rounded
to bf16 before their matmuls, as in any flash kernel).

Compilation dominates interpret mode, so the seeded sweep reuses three compiled shapes and
varies data, positions, segments and lengths, all traced inputs.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmax_jax.kernels import triton_gpu
from tests.reference_np import allowed_mask_np, attention_np

F32_TOL, BF16_FWD_TOL, BF16_GRAD_TOL = 1e-5, 2e-2, 4e-2
INTERPRET = jax.default_backend() == "cpu"


def _dense_attention(q, k, v, c, ok_BTS, scale):
  """Plain attention with an explicit mask; zeros for rows that attend nothing."""
  B, T, N, H = q.shape
  K = k.shape[2]
  q_BTKGH = q.reshape(B, T, K, N // K, H)
  z = jnp.einsum("btkgh,bskh->bkgts", q_BTKGH, k, precision="highest")
  z = z.reshape(B, N, T, k.shape[1])
  z = z * scale * jnp.transpose(c, (0, 2, 1))[..., None]
  ok = ok_BTS[:, None]
  z = jnp.where(ok, z, -jnp.inf)
  zmax = jax.lax.stop_gradient(jnp.max(z, -1, keepdims=True))
  e = jnp.where(ok, jnp.exp(z - jnp.where(jnp.isfinite(zmax), zmax, 0.0)), 0.0)
  d = e.sum(-1, keepdims=True)
  p = e / jnp.where(d > 0, d, 1.0)
  o = jnp.einsum("bkgts,bskh->btkgh", p.reshape(B, K, N // K, T, -1), v, precision="highest")
  return o.reshape(B, T, N, H)


@functools.partial(jax.jit, static_argnames="scale")
def _reference_grads(q, k, v, c, w, ok, scale):
  loss = lambda q, k, v, c: (_dense_attention(q, k, v, c, ok, scale) * w).sum()
  return jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, c)


def _kernel_fn(causal, window, has_seg, block_q=None, block_k=None):
  """Jitted forward and gradient of the kernel; one compile per static config and shape."""
  def attend(q, k, v, c, pos, qseg, kvseg, kvlen):
    return triton_gpu.flash_attention(
        q, k, v, c, pos, qseg if has_seg else None, kvseg if has_seg else None, kvlen,
        scale=0.3, causal=causal, window=window, block_q=block_q, block_k=block_k,
        interpret=INTERPRET, backward_blocks=small_backward)

  # Small backward tiles too, so that small shapes still span several blocks.
  small_backward = None if block_q is None else {
      "dq": (block_q, block_k, 4, 1), "dkdv": (block_q, block_k, 4, 1)}

  def loss(q, k, v, c, w, *rest):
    return (attend(q, k, v, c, *rest).astype(jnp.float32) * w).sum()

  return jax.jit(attend), jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))


_kernel_fn = functools.cache(_kernel_fn)


def _case(rng, B, T, S, N, K, H, *, dtype, pos_kind="offset", seg_kind=None, len_kind="random"):
  """Random inputs; positions, segments and lengths drawn to exercise every mask path."""
  q, k, v, w = (rng.standard_normal(s).astype(np.float32)
                for s in ((B, T, N, H), (B, S, K, H), (B, S, K, H), (B, T, N, H)))
  q, k, v = (np.asarray(jnp.asarray(x, dtype).astype(jnp.float32)) for x in (q, k, v))
  c = rng.uniform(-0.5, 2.5, (B, T, N)).astype(np.float32)
  if pos_kind == "offset":
    pos = np.arange(T)[None] + rng.integers(0, S - T + 1, (B, 1))
  else:  # arbitrary, not monotone
    pos = rng.integers(-3, S + 3, (B, T))
  if seg_kind == "packed":  # documents: segment of a query = segment of its own position
    cuts = np.sort(rng.integers(0, S, (B, 3)), -1)
    kvseg = (np.arange(S)[None, :, None] >= cuts[:, None, :]).sum(-1)
    qseg = np.take_along_axis(kvseg, np.clip(pos, 0, S - 1), 1)
  elif seg_kind == "random":
    kvseg, qseg = rng.integers(0, 3, (B, S)), rng.integers(0, 4, (B, T))
  else:
    kvseg = qseg = np.zeros((B, 1))
  kvlen = {"full": np.full((B,), S), "random": rng.integers(0, S + 1, (B,))}[len_kind]
  as_i32 = lambda x: np.asarray(x, np.int32)
  return (q, k, v, c, as_i32(pos), as_i32(qseg), as_i32(kvseg), as_i32(kvlen), w)


def _check(case, *, causal, window, has_seg, dtype, grads=True, block_q=None, block_k=None):
  q, k, v, c, pos, qseg, kvseg, kvlen, w = case
  B, T = pos.shape
  S = k.shape[1]
  fwd, grad = _kernel_fn(causal, window, has_seg, block_q, block_k)
  cast = lambda x: jnp.asarray(x, dtype)
  args = (cast(q), cast(k), cast(v), jnp.asarray(c), pos, qseg, kvseg, kvlen)
  seg = dict(q_seg=qseg, kv_seg=kvseg) if has_seg else {}
  ref, _ = attention_np(q, k, v, c, scale=0.3, q_pos=pos, causal=causal, window=window,
                        kv_len=kvlen, **seg)
  out = np.asarray(fwd(*args).astype(jnp.float32))
  assert out.dtype == np.float32 and fwd(*args).dtype == dtype
  tol_f, tol_g = (F32_TOL, F32_TOL) if dtype == jnp.float32 else (BF16_FWD_TOL, BF16_GRAD_TOL)
  scale = max(np.abs(ref).max(), 1e-6)
  assert np.abs(out - ref).max() <= tol_f * scale, np.abs(out - ref).max() / scale
  if not grads:
    return
  got = grad(*args[:4], jnp.asarray(w), *args[4:])
  ok = allowed_mask_np(B, T, S, q_pos=pos, causal=causal, window=window, kv_len=kvlen, **seg)
  with jax.enable_x64(True):
    want = _reference_grads(*(np.asarray(x, np.float64) for x in (q, k, v, c, w)), ok, 0.3)
  for name, g, r in zip("qkvc", got, want):
    g, r = np.asarray(g.astype(jnp.float32)), np.asarray(r)
    rscale = max(np.abs(r).max(), 1e-6)
    assert np.abs(g - r).max() <= tol_g * rscale + 1e-6, (name, np.abs(g - r).max() / rscale)
  # Rows that attend nothing: zero output and zero gradients.
  empty = ~ok.any(-1)
  assert np.all(out[empty] == 0)
  assert np.all(np.asarray(got[0].astype(jnp.float32))[empty] == 0)
  assert np.all(np.asarray(got[3])[empty] == 0)


# Fixed buckets: (B, T, S, N, K, H). Ragged T and S (not multiples of the blocks), GQA.
SMALL = (2, 40, 72, 4, 2, 64)
H128 = (1, 48, 80, 2, 1, 128)


@pytest.mark.parametrize("seed,causal,window,has_seg", [
    (10, True, None, False), (11, True, (9, 0), True), (12, False, (5, 7), False),
    (13, False, None, True), (14, False, None, False)])
def test_float32_forward_and_gradients(seed, causal, window, has_seg):
  rng = np.random.default_rng(seed)
  case = _case(rng, *SMALL, dtype=jnp.float32, seg_kind="packed" if has_seg else None,
               len_kind="random" if causal or has_seg else "full")
  _check(case, causal=causal, window=window, has_seg=has_seg, dtype=jnp.float32,
         block_q=16, block_k=16)


def test_head_dim_128_bfloat16():
  rng = np.random.default_rng(1)
  case = _case(rng, *H128, dtype=jnp.bfloat16, len_kind="full")
  _check(case, causal=True, window=None, has_seg=False, dtype=jnp.bfloat16)


def test_causal_block_skipping_matches_dense():
  # Several q and kv blocks: exercises the masked / unmasked / masked loop split.
  rng = np.random.default_rng(2)
  case = _case(rng, 1, 64, 64, 2, 2, 64, dtype=jnp.float32, len_kind="full")
  case = case[:4] + (np.arange(64, dtype=np.int32)[None],) + case[5:]
  _check(case, causal=True, window=None, has_seg=False, dtype=jnp.float32, block_q=16,
         block_k=16)


def test_fully_masked_rows_are_zero():
  rng = np.random.default_rng(3)
  case = list(_case(rng, *SMALL, dtype=jnp.float32, seg_kind="random"))
  case[7] = np.array([0, 30], np.int32)        # batch 0 attends nothing at all
  _check(tuple(case), causal=False, window=None, has_seg=True, dtype=jnp.float32, block_q=16,
         block_k=16)


def test_rejects_half_given_segments():
  x = jnp.zeros((1, 16, 1, 64))
  with pytest.raises(ValueError, match="q_seg_BT"):
    triton_gpu.flash_attention(x, x, x, jnp.ones((1, 16, 1)), None, jnp.zeros((1, 16), int),
                               None, None, scale=1.0, causal=True, window=None,
                               interpret=INTERPRET)


# Seeded sweep: 3 static configs x 36 random cases, each checked forward and backward.
SWEEP_CONFIGS = [(True, None, True), (True, (6, 0), False), (False, (4, 4), True)]


@pytest.mark.parametrize("config", range(len(SWEEP_CONFIGS)))
def test_random_sweep(config):
  causal, window, has_seg = SWEEP_CONFIGS[config]
  rng = np.random.default_rng(1000 + config)
  for i in range(36):
    case = _case(rng, 2, 24, 40, 2, 1, 64, dtype=jnp.float32,
                 pos_kind="offset" if i % 3 else "arbitrary",
                 seg_kind=("packed" if i % 2 else "random") if has_seg else None,
                 len_kind="random" if i % 4 else "full")
    _check(case, causal=causal, window=window, has_seg=has_seg, dtype=jnp.float32,
           block_q=16, block_k=16)


def test_defaults_without_positions_or_lengths():
  # q_pos and kv_len None, no mask terms at all: the block bounds must still cover every pair.
  rng = np.random.default_rng(4)
  q, k, v, c, _, _, _, _, w = _case(rng, 1, 40, 40, 2, 2, 64, dtype=jnp.float32, len_kind="full")
  attend = lambda q, k, v, c: triton_gpu.flash_attention(
      q, k, v, c, None, None, None, None, scale=0.3, causal=False, window=None, block_q=16,
      block_k=16, interpret=INTERPRET,
      backward_blocks={"dq": (16, 16, 4, 1), "dkdv": (16, 16, 4, 1)})
  ref, _ = attention_np(q, k, v, c, scale=0.3)
  assert np.abs(np.asarray(attend(q, k, v, c)) - ref).max() <= F32_TOL * np.abs(ref).max()
  got = jax.grad(lambda *a: (attend(*a) * w).sum(), argnums=(0, 1, 2, 3))(q, k, v, c)
  with jax.enable_x64(True):
    want = _reference_grads(*(np.asarray(x, np.float64) for x in (q, k, v, c, w)),
                            np.ones((1, 40, 40), bool), 0.3)
  for g, r in zip(got, want):
    assert np.abs(np.asarray(g) - np.asarray(r)).max() <= F32_TOL * np.abs(r).max() + 1e-6
