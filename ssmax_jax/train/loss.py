"""Cross-entropy over the vocabulary, chunked along the sequence, with its gradient fused in.

At batch 32 x 1024 the paper model's float32 logits take 6.6 GB; here they exist one chunk
[B, Tc, V] at a time. The forward pass also computes the gradients with respect to the hidden
states and the output matrix (softmax - one-hot is known once the chunk's logits are), so the
backward pass is a multiplication by the incoming cotangent: three matmuls per chunk in total,
as for the unchunked loss, and no recomputation.

The logits are stored in `logits_dtype` between the matmul and the reductions (float32 by
default; bfloat16 halves the loss's memory traffic, as computing the output layer in bf16 does in
most training stacks); the reductions and the probabilities are always computed in float32.
`implementation='pallas'` does those in one kernel that reads each chunk's logits twice
(ssmax_jax/kernels/cross_entropy_gpu.py) where XLA reads them four times: GPU, on each device's
rows of a data/fsdp mesh (not with the vocabulary split over a tensor axis), in chunks of a
multiple of the kernel's BLOCK_ROWS rows per device; it raises a ValueError otherwise.
`implementation='auto'` (the default) takes the kernel where it applies and XLA elsewhere
(`resolve_implementation`, at trace time); `'xla'` always uses XLA.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import PartitionSpec as P

from ssmax_jax.kernels import cross_entropy_gpu
from ssmax_jax.nn.partitioning import fit_spec, logical_to_spec, shard


def _num_chunks(B, T, chunk_tokens):
  """Smallest divisor C of T with B * T / C <= chunk_tokens (chunks cut the sequence so that
  every chunk keeps the batch dimension, and with it the batch sharding)."""
  for c in range(1, T + 1):
    if T % c == 0 and B * (T // c) <= chunk_tokens:
      return c
  return T


LOGITS_DTYPES = ("float32", "bfloat16")
IMPLEMENTATIONS = ("auto", "xla", "pallas")


def _logits_split(num_rows, num_cols):
  """(spec of [rows, vocab] logits under the mesh in use, devices the rows are split over,
  devices the vocabulary is split over); (None, 1, 1) without a mesh."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return None, 1, 1
  spec = fit_spec((num_rows, num_cols), logical_to_spec(("act_batch", "act_vocab")), mesh.shape)

  def size(axes):
    axes = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
    return int(np.prod([mesh.shape[a] for a in axes]))

  return spec, size(spec[0]), size(spec[1])


def _kernel_fits(num_rows, row_shards):
  """Whether each device's share of a chunk's rows splits into the kernel's blocks."""
  return num_rows % row_shards == 0 and cross_entropy_gpu.supported(num_rows // row_shards)


def _row_split(num_rows, num_cols):
  """(spec of [rows, vocab] logits under the mesh in use, devices the rows are split over);
  raises if the mesh splits the vocabulary (the kernel needs whole rows)."""
  spec, row_shards, vocab_shards = _logits_split(num_rows, num_cols)
  if vocab_shards > 1:
    raise ValueError(f"loss implementation 'pallas' needs whole rows of logits on each device, "
                     f"but the mesh splits the vocabulary over {spec[1]!r}: use a mesh without "
                     "tensor parallelism (config.mesh.shape with tensor 1), or 'xla'.")
  return (None if spec is None else P(spec[0], None)), row_shards


def resolve_implementation(implementation, num_rows, num_cols, backend=None):
  """The implementation a chunk of [num_rows, num_cols] logits uses under the mesh in use.

  'xla' and 'pallas' are returned as they are ('pallas' raises later if it does not fit).
  'auto' is 'pallas' when `backend` (default: jax.default_backend()) is 'gpu', the mesh keeps
  whole vocabulary rows on each device and each device's rows are a multiple of the kernel's
  BLOCK_ROWS; 'xla' otherwise. Call it while tracing, under the mesh of the computation.
  """
  if implementation != "auto":
    return implementation
  backend = jax.default_backend() if backend is None else backend
  if backend != "gpu":
    return "xla"
  _, row_shards, vocab_shards = _logits_split(num_rows, num_cols)
  return "pallas" if vocab_shards == 1 and _kernel_fits(num_rows, row_shards) else "xla"


def _fused_loss_and_grad(logits_MV, targets_M, weights_M, vocab_size, grad_dtype, split):
  """The loss kernel on each device's own rows (rows follow the batch sharding; shard_map keeps
  XLA from gathering them), or on all rows without a mesh; split: `_row_split`'s answer."""
  kernel = functools.partial(cross_entropy_gpu.cross_entropy_with_grad, vocab_size=vocab_size,
                             grad_dtype=grad_dtype, interpret=jax.default_backend() == "cpu")
  spec, shards = split
  if shards == 1:
    return kernel(logits_MV, targets_M, weights_M)
  rows = P(spec[0])
  # check_vma=False: the kernel's outputs are per-row, varying exactly as its inputs do.
  return jax.shard_map(kernel, mesh=jax.sharding.get_abstract_mesh(), in_specs=(spec, rows, rows),
                       out_specs=(rows, spec), check_vma=False)(logits_MV, targets_M, weights_M)


def xla_loss_and_grad(logits_MV, targets_M, weights_M, vocab_size, grad_dtype, with_grad=True):
  """The kernel's contract in plain XLA: (weight * (logsumexp - target logit) [M] float32,
  (softmax - onehot) * weight [M, V] in grad_dtype, or None without with_grad); columns from
  vocab_size on are padding."""
  V = logits_MV.shape[-1]
  logits_MV = logits_MV.astype(jnp.float32)
  if V > vocab_size:  # padding columns take no probability
    logits_MV = jnp.where(jnp.arange(V) < vocab_size, logits_MV, -jnp.inf)
  lse_M = jax.nn.logsumexp(logits_MV, axis=-1)
  onehot_MV = jnp.arange(V) == targets_M[:, None]
  tgt_logit_M = jnp.sum(jnp.where(onehot_MV, logits_MV, 0.0), axis=-1)
  loss_M = weights_M * (lse_M - tgt_logit_M)
  if not with_grad:
    return loss_M, None
  dlogits_MV = (jnp.exp(logits_MV - lse_M[:, None]) - onehot_MV) * weights_M[:, None]
  return loss_M, dlogits_MV.astype(grad_dtype)


def check_options(logits_dtype, implementation="auto"):
  if str(np.dtype(logits_dtype)) not in LOGITS_DTYPES:
    raise ValueError(f"logits_dtype={logits_dtype!r} is not supported; choose one of "
                     f"{', '.join(map(repr, LOGITS_DTYPES))}.")
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation={implementation!r} is unknown; choose one of "
                     f"{', '.join(map(repr, IMPLEMENTATIONS))}.")


def _chunk_fwd_bwd(h_BTD, w_DV, targets_BT, weights_BT, vocab_size, chunk_tokens,
                   logits_dtype="float32", implementation="auto", with_grads=True):
  """Returns (sum of weighted losses, dloss/dh [B,T,D], dloss/dw [D,V] float32)."""
  B, T, D = h_BTD.shape
  V = w_DV.shape[1]
  C = _num_chunks(B, T, chunk_tokens)
  w_c = w_DV.astype(h_BTD.dtype)
  implementation = resolve_implementation(implementation, B * (T // C), V)
  fused = with_grads and implementation == "pallas"
  if fused:
    split = _row_split(B * (T // C), V)
    shards = split[1]
    if not _kernel_fits(B * (T // C), shards):
      raise ValueError(f"loss implementation 'pallas' needs chunks of a multiple of "
                       f"{cross_entropy_gpu.BLOCK_ROWS} tokens per device; batch {B} x {T // C} "
                       f"positions over {shards} device(s) has {B * (T // C) / shards:g}: change "
                       "the batch or train.loss_chunk_tokens, or use 'xla'.")

  def chunks(x):  # [B, T, ...] -> [C, B, T/C, ...]
    return jnp.moveaxis(x.reshape(B, C, T // C, *x.shape[2:]), 1, 0)

  def body(carry, xs):
    loss_sum, dw_DV = carry
    h_BtD, tgt_Bt, wt_Bt = xs
    logits_BtV = jnp.einsum("btd,dv->btv", h_BtD, w_c, preferred_element_type=logits_dtype)
    logits_BtV = shard(logits_BtV, ("act_batch", "act_seq", "act_vocab"))
    Bc, t = tgt_Bt.shape
    rows = (logits_BtV.reshape(Bc * t, V), tgt_Bt.reshape(-1), wt_Bt.reshape(-1), vocab_size,
            h_BTD.dtype)
    if fused:
      loss_M, dlogits_MV = _fused_loss_and_grad(*rows, split)
    else:
      loss_M, dlogits_MV = xla_loss_and_grad(*rows, with_grad=with_grads)
    loss_sum += jnp.sum(loss_M)
    if not with_grads:
      return (loss_sum, dw_DV), None
    dlogits_BtV = dlogits_MV.reshape(Bc, t, V)
    dh_BtD = jnp.einsum("btv,dv->btd", dlogits_BtV, w_c, preferred_element_type=jnp.float32)
    dw_DV = dw_DV + jnp.einsum("btd,btv->dv", h_BtD, dlogits_BtV,
                               preferred_element_type=jnp.float32)
    return (loss_sum, dw_DV), dh_BtD.astype(h_BTD.dtype)

  init = (jnp.zeros((), jnp.float32), jnp.zeros((D, V), jnp.float32))
  xs = (chunks(h_BTD), chunks(targets_BT), chunks(weights_BT.astype(jnp.float32)))
  if not with_grads:
    init = (init[0], jnp.zeros((), jnp.float32))
  # A device loop: unrolling the chunks measured 1.5% slower on the H200 (docs/performance.md).
  (loss_sum, dw_DV), dh_CBtD = jax.lax.scan(body, init, xs)
  if not with_grads:
    return loss_sum, None, None
  dh_BTD = jnp.moveaxis(dh_CBtD, 0, 1).reshape(B, T, D)
  return loss_sum, dh_BTD, dw_DV


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def cross_entropy_sum(h_BTD, w_DV, targets_BT, weights_BT, vocab_size, chunk_tokens=8192,
                      logits_dtype="float32", implementation="auto"):
  """sum over tokens of weights * -log softmax(h @ w)[target], float32 scalar.

  h_BTD: hidden states in the compute dtype; w_DV: the output matrix (any float dtype, applied
  in h's dtype), V >= vocab_size: columns from vocab_size on are padding and never predicted;
  targets_BT int; weights_BT: per-token loss weights (the loss mask); logits_dtype: 'float32'
  or 'bfloat16'; implementation: 'auto', 'xla' or 'pallas' (module doc). Differentiable in h
  and w.
  """
  check_options(logits_dtype, implementation)
  return _chunk_fwd_bwd(h_BTD, w_DV, targets_BT, weights_BT, vocab_size, chunk_tokens,
                        logits_dtype, with_grads=False)[0]


def _fwd(h_BTD, w_DV, targets_BT, weights_BT, vocab_size, chunk_tokens, logits_dtype,
         implementation):
  check_options(logits_dtype, implementation)
  loss_sum, dh_BTD, dw_DV = _chunk_fwd_bwd(h_BTD, w_DV, targets_BT, weights_BT, vocab_size,
                                           chunk_tokens, logits_dtype, implementation)
  return loss_sum, (dh_BTD, dw_DV.astype(w_DV.dtype))


def _bwd(vocab_size, chunk_tokens, logits_dtype, implementation, residuals, g):
  del vocab_size, chunk_tokens, logits_dtype, implementation
  dh_BTD, dw_DV = residuals
  return (dh_BTD * g.astype(dh_BTD.dtype), dw_DV * g.astype(dw_DV.dtype), None, None)


cross_entropy_sum.defvjp(_fwd, _bwd)


def reference_cross_entropy_sum(logits_BTV, targets_BT, weights_BT):
  """The plain (materialised) loss, for tests and evaluation."""
  logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  nll_BT = -jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1)[..., 0]
  return jnp.sum(weights_BT * nll_BT)
