"""The 'xla' backend: the kernel's contract in plain XLA, and the plain (materialised) loss
that tests and evaluations hold the chunked one to."""
import jax
import jax.numpy as jnp


def unsupported_reason(*, batch, chunk_len, logits_spec, platform):
  """None: this backend takes every call the op validates."""
  del batch, chunk_len, logits_spec, platform
  return None


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


def reference_cross_entropy_sum(logits_BTV, targets_BT, weights_BT):
  """The plain (materialised) loss, for tests and evaluation."""
  logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  nll_BT = -jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1)[..., 0]
  return jnp.sum(weights_BT * nll_BT)
