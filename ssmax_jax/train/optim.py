"""AdamW with global-norm clipping, weight decay on rank >= 2 parameters, warm-up schedules."""
import jax
import optax


def make_schedule(opt_config, num_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to lr over warmup_steps, then constant or cosine to final_lr_ratio*lr
  at num_steps."""
  lr, warmup = opt_config.lr, opt_config.warmup_steps
  if opt_config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup_steps=warmup, decay_steps=max(num_steps, warmup + 1),
        end_value=lr * opt_config.final_lr_ratio)
  if warmup == 0:
    return optax.constant_schedule(lr)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])


def _decay_mask(params):
  # Norm scales and SSMax's s and b (rank < 2) are not decayed (paper, Table 2).
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(opt_config, num_steps: int) -> optax.GradientTransformation:
  tx = optax.adamw(make_schedule(opt_config, num_steps), b1=opt_config.b1, b2=opt_config.b2,
                   eps=opt_config.eps, weight_decay=opt_config.weight_decay, mask=_decay_mask)
  if opt_config.clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(opt_config.clip_norm), tx)
  return tx
