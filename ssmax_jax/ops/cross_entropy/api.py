"""The public op: cross-entropy over the vocabulary, chunked along the sequence, with its
gradient fused in.

At batch 32 x 1024 the paper model's float32 logits take 6.6 GB; here they exist one chunk
[B, Tc, V] at a time. The forward pass also computes the gradients with respect to the hidden
states and the output matrix (softmax - one-hot is known once the chunk's logits are), so the
backward pass is a multiplication by the incoming cotangent: three matmuls per chunk in total,
as for the unchunked loss, and no recomputation.

The logits are stored in `logits_dtype` between the matmul and the reductions (float32 by
default; bfloat16 halves the loss's memory traffic, as computing the output layer in bf16 does
in most training stacks); the reductions and the probabilities are always computed in float32.
They are reduced by a backend that ops/_dispatch.py chooses at trace time, under the mesh of
the computation:

- implementation=None (or 'auto'): the first backend of the platform's order that takes the
  call: on a GPU the kernel where the mesh keeps whole vocabulary rows on each device and each
  device's rows of a chunk split into its blocks, XLA elsewhere;
- 'xla': plain XLA (reference.py); 'pallas': the platform's kernels (triton.py reads
  each chunk's logits twice where XLA reads them four times), on each device's rows, or a
  ValueError with the reason they cannot take the call.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from ssmax_jax.ops import _dispatch, _sharding
from ssmax_jax.ops.cross_entropy import reference, triton

LOGITS_DTYPES = ("float32", "bfloat16")
IMPLEMENTATIONS = _dispatch.ROW_OP_IMPLEMENTATIONS


def _num_chunks(B, T, chunk_tokens):
  """Smallest divisor C of T with B * T / C <= chunk_tokens (chunks cut the sequence so that
  every chunk keeps the batch dimension, and with it the batch sharding)."""
  for c in range(1, T + 1):
    if T % c == 0 and B * (T // c) <= chunk_tokens:
      return c
  return T


def check_options(logits_dtype, implementation=None):
  """ValueError for an unknown logits_dtype or implementation."""
  if str(np.dtype(logits_dtype)) not in LOGITS_DTYPES:
    raise ValueError(f"logits_dtype={logits_dtype!r} is not supported; choose one of "
                     f"{', '.join(map(repr, LOGITS_DTYPES))}.")
  _dispatch.normalize("loss", implementation, IMPLEMENTATIONS)


def _choose(implementation, batch, chunk_len, logits_spec):
  """The name of the backend ('triton' or 'xla') for chunks of [batch, chunk_len, V] logits
  laid out by `logits_spec`."""
  return _dispatch.choose_triton_or_xla("loss", implementation, reference, triton,
                                        batch=batch, chunk_len=chunk_len, logits_spec=logits_spec)


def _kernel_loss_and_grad(logits_MV, targets_M, weights_M, vocab_size, grad_dtype, rows_spec):
  """The loss kernel on each device's own rows (rows follow the batch sharding), or on all rows
  without a mesh; rows_spec: the [rows, vocab] logits' spec, None when the rows are whole."""
  kernel = functools.partial(triton.cross_entropy_with_grad, vocab_size=vocab_size,
                             grad_dtype=grad_dtype, interpret=_dispatch.platform() == "cpu")
  if rows_spec is None:
    return kernel(logits_MV, targets_M, weights_M)
  rows = P(rows_spec[0])
  return _sharding.on_each_device(kernel, (rows_spec, rows, rows), (rows, rows_spec))(
      logits_MV, targets_M, weights_M)


def _chunk_fwd_bwd(h_BTD, w_DV, targets_BT, weights_BT, vocab_size, chunk_tokens,
                   logits_dtype="float32", implementation=None, logits_spec=None,
                   with_grads=True):
  """Returns (sum of weighted losses, dloss/dh [B,T,D], dloss/dw [D,V] float32)."""
  B, T, D = h_BTD.shape
  V = w_DV.shape[1]
  C = _num_chunks(B, T, chunk_tokens)
  w_c = w_DV.astype(h_BTD.dtype)
  # The loss alone (no gradient) is XLA's: the kernel's saving is in the gradient it writes.
  fused = with_grads and _choose(implementation, B, T // C, logits_spec) == "triton"
  rows_spec = None
  if fused and logits_spec is not None and _sharding.mesh_size(logits_spec[0]) > 1:
    rows_spec = P(logits_spec[0], None)

  def chunks(x):  # [B, T, ...] -> [C, B, T/C, ...]
    return jnp.moveaxis(x.reshape(B, C, T // C, *x.shape[2:]), 1, 0)

  def body(carry, xs):
    loss_sum, dw_DV = carry
    h_BtD, tgt_Bt, wt_Bt = xs
    logits_BtV = jnp.einsum("btd,dv->btv", h_BtD, w_c, preferred_element_type=logits_dtype)
    if logits_spec is not None:
      logits_BtV = jax.lax.with_sharding_constraint(logits_BtV, logits_spec)
    Bc, t = tgt_Bt.shape
    rows = (logits_BtV.reshape(Bc * t, V), tgt_Bt.reshape(-1), wt_Bt.reshape(-1), vocab_size,
            h_BTD.dtype)
    if fused:
      loss_M, dlogits_MV = _kernel_loss_and_grad(*rows, rows_spec)
    else:
      loss_M, dlogits_MV = reference.xla_loss_and_grad(*rows, with_grad=with_grads)
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
  # A device loop: unrolling the chunks measured 1.5% slower on the H200
  # (benchmarks/bench_train.py).
  (loss_sum, dw_DV), dh_CBtD = jax.lax.scan(body, init, xs)
  if not with_grads:
    return loss_sum, None, None
  dh_BTD = jnp.moveaxis(dh_CBtD, 0, 1).reshape(B, T, D)
  return loss_sum, dh_BTD, dw_DV


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def cross_entropy_sum(h_BTD, w_DV, targets_BT, weights_BT, vocab_size, chunk_tokens=8192,
                      logits_dtype="float32", implementation=None, logits_spec=None):
  """sum over tokens of weights * -log softmax(h @ w)[target], float32 scalar.

  h_BTD: hidden states in the compute dtype; w_DV: the output matrix (any float dtype, applied
  in h's dtype), V >= vocab_size: columns from vocab_size on are padding and never predicted;
  targets_BT int; weights_BT: per-token loss weights (the loss mask); logits_dtype: 'float32'
  or 'bfloat16'; implementation: None (or 'auto'), 'xla' or 'pallas' (module doc);
  logits_spec: the PartitionSpec of the [B, T, V] logits under the mesh in use (None: no
  mesh), which each chunk [B, T/C, V] of them is constrained to (the chunks cut only the
  sequence) and whose batch axes the kernel's rows follow. Differentiable in h and w.
  """
  check_options(logits_dtype, implementation)
  return _chunk_fwd_bwd(h_BTD, w_DV, targets_BT, weights_BT, vocab_size, chunk_tokens,
                        logits_dtype, logits_spec=logits_spec, with_grads=False)[0]


def _fwd(h_BTD, w_DV, targets_BT, weights_BT, vocab_size, chunk_tokens, logits_dtype,
         implementation, logits_spec):
  check_options(logits_dtype, implementation)
  loss_sum, dh_BTD, dw_DV = _chunk_fwd_bwd(h_BTD, w_DV, targets_BT, weights_BT, vocab_size,
                                           chunk_tokens, logits_dtype, implementation,
                                           logits_spec)
  return loss_sum, (dh_BTD, dw_DV.astype(w_DV.dtype))


def _bwd(vocab_size, chunk_tokens, logits_dtype, implementation, logits_spec, residuals, g):
  del vocab_size, chunk_tokens, logits_dtype, implementation, logits_spec
  dh_BTD, dw_DV = residuals
  return (dh_BTD * g.astype(dh_BTD.dtype), dw_DV * g.astype(dw_DV.dtype), None, None)


cross_entropy_sum.defvjp(_fwd, _bwd)
