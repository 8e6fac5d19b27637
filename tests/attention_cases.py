"""The attention suite's one case table and its float64 references, shared by every backend.

Each backend's file (tests/test_attention_<backend>.py) runs the cases tagged with its name
through `check`, with a runner of the kernel contract (ssmax_jax/ops/attention/__init__.py):
forward outputs are held to the float64 NumPy reference (tests/reference_np.py), gradients
(q, k, v, c of sum(out * w)) to jax.grad of `dense_attention` evaluated in float64, both
relative to the largest reference magnitude. Interpret mode is slow on a CPU, so each kernel
runs the cases its own file ran before (tags), and the seeded sweeps reuse one compiled shape
per entry while varying data, positions, segments and lengths (traced inputs).
"""
import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tests.reference_np import allowed_mask_np, attention_np

F32_TOL = 1e-5


@dataclasses.dataclass(frozen=True)
class Case:
  """One call of the kernel contract: shapes, dtype, masks and how the mask arrays are drawn.

  positions: None (q_pos not passed: 0..T-1), 'arange', 'offset' (arange plus a random start
  within S - T), 'suffix' (the last T of S, chunked prefill), 'decode' (one query at S-1 or
  S/2), 'arbitrary' (random, not monotone). segments: None, 'packed' (documents: a query's
  segment is its position's), 'random', 'sorted'. lengths: None (not passed), 'full',
  'random', or one length per batch row. small_blocks: the backend's small tiles, so that
  small shapes span several blocks. backends: the kernels that run it (see `cases`).
  """
  name: str
  shape: tuple  # B, T, S, N, K, H
  dtype: object = jnp.float32
  causal: bool = False
  window: tuple | None = None
  positions: str | None = "offset"
  segments: str | None = None
  lengths: object = "full"
  small_blocks: bool = False
  backends: tuple = ()
  seed: int = 0


SMALL = (2, 40, 72, 4, 2, 64)   # ragged T and S (not multiples of the blocks), GQA
CASES = (
    # Triton's float32 grid: each mask term alone and together.
    Case("causal_lengths", SMALL, causal=True, lengths="random", small_blocks=True,
         backends=("triton",), seed=10),
    Case("causal_window_packed", SMALL, causal=True, window=(9, 0), segments="packed",
         lengths="random", small_blocks=True, backends=("triton",), seed=11),
    Case("window_both_sides", SMALL, window=(5, 7), small_blocks=True, backends=("triton",),
         seed=12),
    Case("packed_lengths", SMALL, segments="packed", lengths="random", small_blocks=True,
         backends=("triton",), seed=13),
    Case("unmasked_offset", SMALL, small_blocks=True, backends=("triton",), seed=14),
    Case("h128_bf16_causal", (1, 48, 80, 2, 1, 128), jnp.bfloat16, causal=True,
         backends=("triton",), seed=1),
    # Several q and kv blocks: the masked / unmasked / masked loop split.
    Case("causal_block_skipping", (1, 64, 64, 2, 2, 64), causal=True, positions="arange",
         small_blocks=True, backends=("triton",), seed=2),
    # Batch row 0 attends nothing at all (length 0), random segments empty other rows.
    Case("fully_masked_rows", SMALL, segments="random", lengths=(0, 30), small_blocks=True,
         backends=("triton",), seed=3),
    # q_pos and kv_len None, no mask terms: the block bounds must still cover every pair.
    Case("defaults", (1, 40, 40, 2, 2, 64), positions=None, lengths=None, small_blocks=True,
         backends=("triton",), seed=4),
    # The TPU kernel's cases (128-lane blocks: longer sequences).
    Case("causal_gqa_ragged_h64", (1, 300, 300, 4, 2, 64), causal=True, positions="arange",
         lengths=None, small_blocks=True, backends=("mosaic_tpu",), seed=21),
    Case("full_h128_segments_lengths", (2, 130, 300, 2, 1, 128), positions="arange",
         segments="sorted", lengths=(300, 77), backends=("mosaic_tpu",), seed=26),
    Case("window_chunked_prefill", (1, 100, 260, 2, 2, 64), causal=True, window=(32, 8),
         positions="suffix", lengths=None, backends=("mosaic_tpu",), seed=22),
    Case("window_bidirectional", (1, 150, 150, 2, 1, 128), window=(20, 20), positions=None,
         lengths=None, backends=("mosaic_tpu",), seed=20),
    Case("decode_one_query", (2, 1, 300, 4, 1, 64), causal=True, positions="decode",
         lengths=(300, 180), backends=("mosaic_tpu",), seed=16),
    Case("bf16_causal_gqa_h128", (1, 260, 260, 4, 2, 128), jnp.bfloat16, causal=True,
         positions="arange", lengths=None, backends=("mosaic_tpu",), seed=20),
    # The Hopper kernels' scope: T == S, a multiple of 128, default positions, no lengths.
    Case("hopper_causal_gqa_h128", (2, 256, 256, 4, 2, 128), jnp.bfloat16, causal=True,
         positions=None, lengths=None, backends=("mosaic_gpu", "cudnn"), seed=31),
    Case("hopper_full_h64", (1, 384, 384, 2, 2, 64), jnp.bfloat16, positions=None,
         lengths=None, backends=("mosaic_gpu", "cudnn"), seed=32),
    Case("hopper_full_mqa_h128", (1, 512, 512, 2, 1, 128), jnp.bfloat16, positions=None,
         lengths=None, backends=("mosaic_gpu",), seed=33),
    Case("hopper_causal_h64", (1, 256, 256, 2, 2, 64), jnp.bfloat16, causal=True,
         positions=None, lengths=None, backends=("mosaic_gpu", "cudnn"), seed=34),
)


XLA_MAX_PAIRS = 40_000   # 'xla' materialises [B,N,T,S]: larger cases only cost time there


def cases(backend):
  """The cases `backend` runs ('xla': every case up to XLA_MAX_PAIRS query-key pairs)."""
  if backend == "xla":
    return [c for c in CASES if c.shape[1] * c.shape[2] <= XLA_MAX_PAIRS]
  return [c for c in CASES if backend in c.backends]


class Inputs(NamedTuple):
  """Arrays of one call: NumPy, rounded to the case's dtype but held in float32; mask
  arrays int32 or None (not passed). w is the output cotangent."""
  q: np.ndarray
  k: np.ndarray
  v: np.ndarray
  c: np.ndarray
  q_pos: np.ndarray | None
  q_seg: np.ndarray | None
  kv_seg: np.ndarray | None
  kv_len: np.ndarray | None
  w: np.ndarray


def _round(x, dtype):
  return np.asarray(jnp.asarray(x, dtype).astype(jnp.float32))


def draw(case, rng=None, *, positions=None, segments=None, lengths=None, logit_size=1.0):
  """Random inputs for `case` (positions/segments/lengths override the case's kinds)."""
  rng = np.random.default_rng(case.seed) if rng is None else rng
  B, T, S, N, K, H = case.shape
  positions = case.positions if positions is None else positions
  segments = case.segments if segments is None else segments
  lengths = case.lengths if lengths is None else lengths
  q, k, v, w = (rng.standard_normal(s).astype(np.float32)
                for s in ((B, T, N, H), (B, S, K, H), (B, S, K, H), (B, T, N, H)))
  q, k, v = _round(q * logit_size, case.dtype), _round(k, case.dtype), _round(v, case.dtype)
  c = rng.uniform(-0.5, 2.5, (B, T, N)).astype(np.float32)
  pos = {None: np.broadcast_to(np.arange(T), (B, T)),
         "arange": np.broadcast_to(np.arange(T), (B, T)),
         "offset": np.arange(T)[None] + rng.integers(0, S - T + 1, (B, 1)),
         "suffix": np.broadcast_to(np.arange(S - T, S), (B, T)),
         "decode": np.array([[S - 1], [S // 2]])[:B],
         "arbitrary": rng.integers(-3, S + 3, (B, T))}[positions]
  q_seg = kv_seg = None
  if segments == "packed":
    cuts = np.sort(rng.integers(0, S, (B, 3)), -1)
    kv_seg = (np.arange(S)[None, :, None] >= cuts[:, None, :]).sum(-1)
    q_seg = np.take_along_axis(kv_seg, np.clip(pos, 0, S - 1), 1)
  elif segments == "random":
    kv_seg, q_seg = rng.integers(0, 3, (B, S)), rng.integers(0, 4, (B, T))
  elif segments == "sorted":
    q_seg = np.sort(rng.integers(0, 3, (B, T)), axis=1)
    kv_seg = np.sort(rng.integers(0, 3, (B, S)), axis=1)
  if lengths is None:
    kv_len = None
  elif lengths == "full":
    kv_len = np.full((B,), S)
  elif lengths == "random":
    kv_len = rng.integers(0, S + 1, (B,))
  else:
    kv_len = np.asarray(lengths)
  i32 = lambda x: None if x is None else np.asarray(x, np.int32)
  return Inputs(q, k, v, c, None if positions is None else i32(pos), i32(q_seg), i32(kv_seg),
                i32(kv_len), w)


def sweep_masks(rng, B, T, S, segments):
  """(q_pos, q_seg, kv_seg, kv_len) of a sweep step: positions from a random start (some
  permuted), lengths random half the time, sorted segment ids of 1 to 4 segments."""
  q_pos = rng.integers(-20, S, (B, 1)) + np.arange(T)
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


def allowed(x: Inputs, *, causal, window):
  """Boolean [B,T,S]: True where query i of batch b attends key j."""
  B, T = x.q.shape[:2]
  return allowed_mask_np(B, T, x.k.shape[1], q_pos=x.q_pos, causal=causal, window=window,
                         q_seg=x.q_seg, kv_seg=x.kv_seg, kv_len=x.kv_len)


def reference_out(x: Inputs, *, scale, causal, window):
  """The forward in float64 (tests/reference_np.py)."""
  seg = {} if x.q_seg is None else dict(q_seg=x.q_seg, kv_seg=x.kv_seg)
  out, _ = attention_np(x.q, x.k, x.v, x.c, scale=scale, q_pos=x.q_pos, causal=causal,
                        window=window, kv_len=x.kv_len, **seg)
  return out


def dense_attention(q, k, v, c, ok_BTS, scale):
  """Plain attention with an explicit mask in q's dtype; zeros for rows that attend nothing."""
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
  loss = lambda q, k, v, c: (dense_attention(q, k, v, c, ok, scale) * w).sum()
  return jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, c)


def reference_grads(x: Inputs, ok_BTS, scale):
  """(dq, dk, dv, dc) of sum(out * w) in float64."""
  with jax.enable_x64(True):
    grads = _reference_grads(*(np.asarray(a, np.float64) for a in (x.q, x.k, x.v, x.c, x.w)),
                             ok_BTS, scale)
    return [np.asarray(g) for g in grads]


def out_and_grads(run, *, scale, causal, window):
  """Jitted (q, k, v, c, masks..., w) -> (out, (dq, dk, dv, dc)) of a kernel-contract runner
  run(q, k, v, c, q_pos, q_seg, kv_seg, kv_len, *, scale, causal, window)."""
  def fn(q, k, v, c, q_pos, q_seg, kv_seg, kv_len, w):
    attend = lambda *a: run(*a, q_pos, q_seg, kv_seg, kv_len, scale=scale, causal=causal,
                            window=window)
    out, vjp = jax.vjp(attend, q, k, v, c)
    return out, vjp(w.astype(out.dtype))
  return jax.jit(fn)


def check(fn, x: Inputs, dtype, *, scale, causal, window, tol_fwd, tol_grad, grad_atol=0.0,
          grads=True):
  """Runs fn = out_and_grads(...) on x in `dtype` and holds it to the float64 references.

  Errors are relative to the largest reference magnitude (a gradient whose reference is all
  zero, e.g. every query attends at most one key, to the case's largest gradient), plus
  grad_atol on gradients. Rows that attend nothing must give zero output, dq and dc; keys no
  query attends, zero dk and dv. Returns the errors (out, dq, dk, dv, dc).
  """
  cast = lambda a: jnp.asarray(a, dtype)
  masks = [None if m is None else jnp.asarray(m) for m in (x.q_pos, x.q_seg, x.kv_seg, x.kv_len)]
  out, got = fn(cast(x.q), cast(x.k), cast(x.v), jnp.asarray(x.c), *masks, cast(x.w))
  assert out.shape == x.q.shape and out.dtype == dtype, (out.shape, out.dtype)
  out = np.asarray(out.astype(jnp.float32), np.float64)
  ref = reference_out(x, scale=scale, causal=causal, window=window)
  errors = [np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-6)]
  assert errors[0] <= tol_fwd, ("forward", errors[0])
  ok = allowed(x, causal=causal, window=window)
  empty_BT = ~ok.any(-1)
  assert np.all(out[empty_BT] == 0)
  if not grads:
    return errors
  want = reference_grads(x, ok, scale)
  largest = max(np.abs(r).max() for r in want)
  for name, g, r, like in zip("qkvc", got, want, (x.q, x.k, x.v, x.c)):
    assert g.shape == like.shape and g.dtype == (jnp.float32 if name == "c" else dtype), name
    g = np.asarray(g.astype(jnp.float32), np.float64)
    scale_r = np.abs(r).max() if np.any(r) else largest
    errors.append(np.abs(g - r).max() / max(scale_r, 1e-6))
    assert np.abs(g - r).max() <= tol_grad * max(scale_r, 1e-6) + grad_atol, (name, errors[-1])
  dq, dk, dv, dc = (np.asarray(g.astype(jnp.float32)) for g in got)
  assert np.all(dq[empty_BT] == 0) and np.all(dc[empty_BT] == 0)
  unseen_BS = ~ok.any(1)   # the mask is the same for every head
  assert np.all(dk[unseen_BS] == 0) and np.all(dv[unseen_BS] == 0)
  return errors


# ----------------------------------------------------------------------------- the public op
# The op's own table: every masking argument of dot_product_attention (with the matching
# reference_np arguments) and every variant, on small shapes.

OP_SHAPE = (2, 9, 9, 4, 2, 8)   # B, T, S, N, K, H


def qkv(seed, t=9, s=9, n=4, k=2, h=8, b=2):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(b, t, n, h)).astype(np.float32),
          rng.normal(size=(b, s, k, h)).astype(np.float32),
          rng.normal(size=(b, s, k, h)).astype(np.float32))


SEG = np.array([[1, 1, 1, 2, 2, 2, 2, 3, 3], [5, 5, 7, 7, 7, 7, 7, 7, 7]])
POS = np.array([[0, 2, 2, 5, 8, 8, 1, 3, 7]] * 2)
# name: (op kwargs, reference_np mask kwargs).
OP_MASKS = {
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
    "positions": ({"is_causal": True, "query_positions": POS}, {"causal": True, "q_pos": POS}),
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


def op_kwargs(variant, n, num_heads=4):
  """How a user passes each variant: s/b directly, or a precomputed multiplier."""
  from ssmax_jax import ops   # pylint: disable=g-import-not-at-top
  args = VARIANT_ARGS[variant]
  if variant == "softmax":
    return {}
  if variant in ("ssmax", "ssmax_bias"):
    return dict(args)
  return {"logit_multiplier": ops.logit_multiplier(variant, n, num_heads=num_heads, **args)}


def directional_check(f_jax, f_ref, args, seed, rtol=2e-4):
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
