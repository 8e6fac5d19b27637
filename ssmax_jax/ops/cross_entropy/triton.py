"""The 'triton' backend: softmax cross-entropy over materialised logits, with its gradient, in
two passes (Pallas Triton lowering; interpret mode on CPU).

The loss (ssmax_jax/ops/cross_entropy/api.py) writes each chunk's logits [M, V] with a matmul
and then needs, per row, the log-sum-exp, the target's logit and the probabilities minus the
one-hot. XLA spends three reductions and an elementwise pass on that, reading the logits four
times. Here one program owns `block_rows` rows and streams their logits twice in `block_vocab`
tiles: pass 1 keeps an online max and sum of exponentials and picks the target logit; pass 2
writes (softmax - onehot) * weight. Counted: 2 reads of the logits and 1 write of the gradient,
the floor for a loss whose gradient needs the final normaliser when a row does not stay on
chip. When `block_vocab` covers the whole row the program keeps the row in registers and reads
it once: right for small vocabularies, but 3x slower than two passes at GPT-2's 50,304 columns
(1:65536:32, 64 values per thread; benchmarks/bench_loss_kernel.py).

Contract (`xla_loss_and_grad` in reference.py computes the same): logits [M, V] float32 or
bfloat16; targets [M] int (in [0, vocab_size)); weights [M] float32; columns >= vocab_size are
padding (probability 0). Returns (weighted losses [M] float32, dlogits [M, V] in `grad_dtype`).
Math in float32.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from ssmax_jax.ops import _sharding

# 1:2048:4: fastest of eleven tilings on the H200 at 8,192 x 50,304 bf16, 0.752 ms against 0.962
# for 4:1024:4 (benchmarks/bench_loss_kernel.py). One row per program also takes any number of
# rows.
BLOCK_ROWS = 1
BLOCK_VOCAB = 2048
NUM_WARPS = 4
# Triton's software-pipelining depth of the two passes' tile loops: 1 to 4 measured the same
# (0.750-0.757 ms; benchmarks/bench_loss_kernel.py).
NUM_STAGES = 2


def supported(num_rows: int, block_rows: int | None = None) -> bool:
  """Rows split into whole blocks of block_rows (default BLOCK_ROWS; the vocabulary may have
  any size: its last tile is masked)."""
  return num_rows % (block_rows or BLOCK_ROWS) == 0


def unsupported_reason(*, batch, chunk_len, logits_spec, platform):
  """Why the kernel cannot take a chunk of [batch, chunk_len, V] logits laid out by
  `logits_spec` (None when it can): it needs whole vocabulary rows on each device, in whole
  blocks of rows."""
  del platform
  rows = batch * chunk_len
  spec = (None, None, None) if logits_spec is None else tuple(logits_spec) + (None,) * 3
  if _sharding.mesh_size(spec[2]) > 1:
    return (f"needs whole rows of logits on each device, but the mesh splits the vocabulary "
            f"over {spec[2]!r}: use a mesh without tensor parallelism (config.mesh.shape with "
            "tensor 1), or 'xla'")
  shards = _sharding.mesh_size(spec[0])
  if rows % shards == 0 and supported(rows // shards):
    return None
  return (f"needs chunks of a multiple of {BLOCK_ROWS} tokens per device; batch {batch} x "
          f"{chunk_len} positions over {shards} device(s) has {rows / shards:g}: change the "
          "batch or train.loss_chunk_tokens, or use 'xla'")


def _kernel(logits_ref, targets_ref, weights_ref, loss_ref, dlogits_ref, *, vocab_size,
            num_cols, block_vocab):
  rows = logits_ref.shape[0]
  num_tiles = pl.cdiv(num_cols, block_vocab)
  target = targets_ref[...]
  weight = weights_ref[...]

  def tile(j):
    cols = j * block_vocab + lax.broadcasted_iota(jnp.int32, (rows, block_vocab), 1)
    in_bounds = cols < num_cols
    x = plgpu.load(logits_ref.at[:, pl.ds(j * block_vocab, block_vocab)],
                   mask=in_bounds, other=0.0).astype(jnp.float32)
    return cols, in_bounds, jnp.where(cols < vocab_size, x, -jnp.inf)

  def stats(j, carry):
    m, s, picked = carry
    cols, _, x = tile(j)
    m_new = jnp.maximum(m, x.max(axis=1))
    s = s * jnp.exp(m - m_new) + jnp.exp(x - m_new[:, None]).sum(axis=1)
    picked += jnp.where(cols == target[:, None], x, 0.0).sum(axis=1)
    return m_new, s, picked

  if num_tiles == 1:  # the row fits one tile: read it once and keep its exponentials
    cols, in_bounds, x = tile(0)
    m = x.max(axis=1)
    picked = jnp.where(cols == target[:, None], x, 0.0).sum(axis=1)
    e = jnp.exp(x - m[:, None])  # padding columns are -inf: 0
    s = e.sum(axis=1)
    loss_ref[...] = weight * (m + jnp.log(s) - picked)
    d = (e * (1.0 / s)[:, None] - (cols == target[:, None])) * weight[:, None]
    plgpu.store(dlogits_ref.at[:, pl.ds(0, block_vocab)], d.astype(dlogits_ref.dtype),
                mask=in_bounds)
    return

  zeros = jnp.zeros((rows,), jnp.float32)
  m, s, picked = lax.fori_loop(0, num_tiles, stats, (zeros - jnp.inf, zeros, zeros))
  lse = m + jnp.log(s)
  loss_ref[...] = weight * (lse - picked)

  def grad(j, _):
    cols, in_bounds, x = tile(j)
    d = (jnp.exp(x - lse[:, None]) - (cols == target[:, None])) * weight[:, None]
    plgpu.store(dlogits_ref.at[:, pl.ds(j * block_vocab, block_vocab)],
                d.astype(dlogits_ref.dtype), mask=in_bounds)
    return 0

  lax.fori_loop(0, num_tiles, grad, 0)


@functools.partial(jax.jit, static_argnames=("vocab_size", "grad_dtype", "block_rows",
                                             "block_vocab", "num_warps", "num_stages",
                                             "interpret"))
def cross_entropy_with_grad(logits_MV, targets_M, weights_M, *, vocab_size, grad_dtype,
                            block_rows=BLOCK_ROWS, block_vocab=BLOCK_VOCAB, num_warps=NUM_WARPS,
                            num_stages=NUM_STAGES, interpret=False):
  """(weight * (logsumexp - target logit) [M] float32, (softmax - onehot) * weight [M, V])."""
  M, V = logits_MV.shape
  if num_stages < 1:
    raise ValueError(f"num_stages={num_stages}: pass a positive pipelining depth.")
  if not supported(M, block_rows):
    raise ValueError(f"{M} rows do not split into blocks of {block_rows}: call supported() "
                     "first and use the 'xla' backend otherwise.")
  kernel = functools.partial(_kernel, vocab_size=vocab_size, num_cols=V, block_vocab=block_vocab)
  return pl.pallas_call(
      kernel,
      grid=(M // block_rows,),
      in_specs=[pl.BlockSpec((block_rows, V), lambda i: (i, 0)),
                pl.BlockSpec((block_rows,), lambda i: (i,)),
                pl.BlockSpec((block_rows,), lambda i: (i,))],
      out_specs=[pl.BlockSpec((block_rows,), lambda i: (i,)),
                 pl.BlockSpec((block_rows, V), lambda i: (i, 0))],
      out_shape=[jax.ShapeDtypeStruct((M,), jnp.float32),
                 jax.ShapeDtypeStruct((M, V), grad_dtype)],
      compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
      interpret=interpret,
      name="softmax_cross_entropy_with_grad",
  )(logits_MV, targets_M.astype(jnp.int32), weights_M.astype(jnp.float32))
