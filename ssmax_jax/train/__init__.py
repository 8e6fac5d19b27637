"""Training: config schema, mesh and shardings, fused loss, train step, checkpoints, the loop.

  train(config, workdir)                      trains or resumes a run (python -m experiments.train)
  load_model(workdir, step=None, overrides=)  restores any checkpoint with its saved config
  default_config(), validate(config)          the config schema and its checks
  apply_xla_flags(config)                     config.xla_flags into XLA_FLAGS (the launcher)
"""
from ssmax_jax.train.checkpoint import Checkpointer, load_model, read_config
from ssmax_jax.ops.cross_entropy import cross_entropy_sum
from ssmax_jax.train.config import apply_xla_flags, default_config, model_config, validate
from ssmax_jax.train.mesh import make_mesh, state_shardings
from ssmax_jax.train.metrics import read_metrics
from ssmax_jax.train.step import loss_sum, make_train_step
from ssmax_jax.train.trainer import NonFiniteLossError, train
