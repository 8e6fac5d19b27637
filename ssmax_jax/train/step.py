"""The jitted train step: explicit shardings, donated state, gradient accumulation."""
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ssmax_jax.nn.partitioning import activation_spec, shard
from ssmax_jax.ops.cross_entropy import cross_entropy_sum

# Device-side numbers of the step; everything else is computed on the host at log time.
METRICS = ("loss", "grad_norm", "tokens")


def loss_options(config) -> dict:
  """loss_sum's keyword arguments from a training config (train.loss_*, data.packing)."""
  t = config.train
  return dict(chunk_tokens=t.loss_chunk_tokens, use_segments=config.data.packing,
              logits_dtype=t.loss_logits_dtype, implementation=t.loss_implementation)


def loss_sum(model, batch, *, chunk_tokens=8192, use_segments=True, logits_dtype="float32",
             implementation=None):
  """(sum of masked next-token losses, number of loss tokens) of a batch dict."""
  kwargs = {}
  if use_segments:  # packed documents: positions and attention (and n) restart per document
    kwargs = dict(positions_BT=batch["positions"], segment_ids_BT=batch["segment_ids"])
  h_BTD = model.hidden(batch["inputs"], **kwargs)
  w_DV = model.lm_head.kernel[...]
  # The op knows no logical axis names: it gets the logits' layout under the mesh in use.
  logits_spec = activation_spec((*h_BTD.shape[:2], w_DV.shape[1]),
                                ("act_batch", "act_seq", "act_vocab"))
  loss = cross_entropy_sum(h_BTD, w_DV, batch["targets"], batch["loss_mask"],
                           model.config.vocab_size, chunk_tokens, logits_dtype, implementation,
                           logits_spec)
  return loss, jnp.sum(batch["loss_mask"])


def head_scalars(model) -> dict:
  """{'s': [L,N], 'b': [L,N]} of the layers that learn them (empty for fixed variants)."""
  out = {}
  for name in ("s", "b"):
    values = [getattr(a.logit_scale, name) for a in model.attention_layers()]
    if all(v is not None for v in values):
      out[name] = jnp.stack([v[...] for v in values])
  return out


def _microbatches(batch, accum):
  # Microbatch a takes rows a, a + accum, ...: every device's contiguous block of the batch
  # holds rows of every microbatch, so no microbatch sits on a subset of devices.
  def split(x_BT):
    B, T = x_BT.shape
    x_UBT = jnp.swapaxes(x_BT.reshape(B // accum, accum, T), 0, 1)
    return shard(x_UBT, (None, "act_batch", "act_seq"))
  return jax.tree.map(split, batch)


def make_train_step(graphdef, state_treedef, leaf_shardings, batch_sharding, metrics_sharding,
                    *, grad_accum_steps=1, loss_kwargs=None):
  """Returns step(leaves, batch) -> (leaves, metrics), jitted with donated state.

  leaves: jax.tree.leaves(nnx.state((model, optimizer))) for `graphdef`, the state's structure
  being state_treedef and leaf_shardings its leaves' shardings; batch: dict of [B,T] arrays
  (global). The step takes the leaves, not the nnx.State: flattening and rebuilding that nested
  pytree in Python cost 4.7-7.9 ms of host time per call for the paper model's 372 leaves on a
  2-core CPU host, against 2.0-2.5 ms with the leaves (benchmarks/bench_train.py, host_ms).
  loss_kwargs: loss_sum's options (`loss_options(config)`; None: its defaults).
  metrics: loss (mean over loss tokens), grad_norm, tokens, and s (b) per layer and head.
  """
  leaf_shardings = list(leaf_shardings)
  if len(leaf_shardings) != state_treedef.num_leaves:
    raise ValueError(f"{len(leaf_shardings)} leaf_shardings for a state of "
                     f"{state_treedef.num_leaves} leaves: pass one sharding per leaf.")

  def step(leaves, batch):
    model, optimizer = nnx.merge(graphdef, jax.tree.unflatten(state_treedef, leaves))
    model_def, params, rest = nnx.split(model, nnx.Param, ...)
    num_tokens = jnp.sum(batch["loss_mask"])
    denom = jnp.maximum(num_tokens, 1.0)

    def mean_loss(params, micro):
      m = nnx.merge(model_def, params, rest)
      return loss_sum(m, micro, **(loss_kwargs or {}))[0] / denom

    grad_fn = jax.value_and_grad(mean_loss)
    if grad_accum_steps == 1:
      loss, grads = grad_fn(params, batch)
    else:
      def body(carry, micro):
        loss_acc, grads_acc = carry
        loss, grads = grad_fn(params, micro)
        return (loss_acc + loss, jax.tree.map(jnp.add, grads_acc, grads)), None
      zeros = jax.tree.map(jnp.zeros_like, params)
      (loss, grads), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros),
                                      _microbatches(batch, grad_accum_steps))
    optimizer.update(model, grads)
    metrics = dict(loss=loss, grad_norm=optax.tree.norm(grads), tokens=num_tokens,
                   **head_scalars(model))
    return jax.tree.leaves(nnx.state((model, optimizer))), metrics

  batch_shardings = {k: batch_sharding for k in
                     ("inputs", "targets", "segment_ids", "positions", "loss_mask")}
  return jax.jit(step, in_shardings=(leaf_shardings, batch_shardings),
                 out_shardings=(leaf_shardings, metrics_sharding), donate_argnums=0)


def make_eval_step(graphdef, state_treedef, leaf_shardings, batch_sharding, metrics_sharding,
                   *, loss_kwargs=None):
  """Returns eval_step(leaves, batch) -> {'loss_sum', 'tokens'}: the training loss (loss_sum)
  of a batch without gradients, jitted for the step's state layout (make_train_step's
  arguments); the state is read, not donated."""
  def eval_step(leaves, batch):
    model, _ = nnx.merge(graphdef, jax.tree.unflatten(state_treedef, leaves))
    loss, tokens = loss_sum(model, batch, **(loss_kwargs or {}))
    return {"loss_sum": loss, "tokens": tokens}

  batch_shardings = {k: batch_sharding for k in
                     ("inputs", "targets", "segment_ids", "positions", "loss_mask")}
  return jax.jit(eval_step, in_shardings=(list(leaf_shardings), batch_shardings),
                 out_shardings=metrics_sharding)


def flops_per_token(cfg, num_params: int, seq_len: int) -> float:
  """Training FLOPs per token: 6 x (parameters without the embedding table) + attention, the
  count of shared/bench/jax_gpt_anchor.py so MFU figures compare."""
  padding = (cfg.padded_vocab_size - cfg.vocab_size) * cfg.d_model  # in lm_head, not counted
  non_embed = num_params - cfg.padded_vocab_size * cfg.d_model - padding
  return 6.0 * non_embed + 6.0 * cfg.num_layers * seq_len * cfg.d_model
