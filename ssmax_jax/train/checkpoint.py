"""Orbax checkpoints of a run, and `load_model` to restore any of them for evaluation.

Layout of a workdir:
  config.json                      the full training config (ml_collections, JSON)
  checkpoints/<step>/params        model parameters (nnx.State of nnx.Param, orbax PyTree)
  checkpoints/<step>/opt_state     optimizer state (nnx.State: step count, Adam moments)
  checkpoints/<step>/meta          JSON: step, attention variant in effect, seed
  checkpoints/<step>/data          the data iterator's state (grain, one file per process)
  corrupt_checkpoints/<step>       checkpoints that failed to restore, moved aside
  metrics.jsonl, tensorboard/      training metrics
"""
import dataclasses
import logging
import os
import shutil
import time
import warnings

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from ssmax_jax.models.transformer import Transformer
from ssmax_jax.train import config as config_lib
from ssmax_jax.train import mesh as mesh_lib

CONFIG_FILE = "config.json"


def _abstract_target(abstract_state, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_state, shardings)


class ConfigMismatchError(ValueError):
  """A checkpoint that is intact but does not fit the config: an error, never skipped."""


class Checkpointer:
  """An orbax CheckpointManager over workdir/checkpoints (async, keeping the last `keep`)."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, "checkpoints")
    if read_only and not os.path.isdir(self.directory):
      raise ValueError(f"{workdir} has no checkpoints/ directory: not a training workdir, or "
                       "no checkpoint was saved yet.")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=not read_only,
        read_only=read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, params, opt_state, meta: dict, data_iter=None):
    items = dict(params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
                 meta=ocp.args.JsonSave(meta))
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()

  def restore_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, *, params=None, opt_state=None, data_iter=None):
    """Restores the items given as (abstract, shardings) pairs (and the iterator in place)."""
    items = {}
    for name, target in (("params", params), ("opt_state", opt_state)):
      if target is not None:
        items[name] = ocp.args.StandardRestore(_abstract_target(*target))
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    return self.manager.restore(step, args=ocp.args.Composite(**items))

  def restore_latest(self, restore_fn, *, move_aside: bool = True):
    """Calls restore_fn(step) from the newest step down until one succeeds; returns
    (step, result) or (None, None). A checkpoint that fails is reported with a warning and,
    when move_aside, moved to workdir/corrupt_checkpoints so later saves can reuse its step."""
    for step in reversed(self.steps()):
      try:
        return step, restore_fn(step)
      except ConfigMismatchError:
        raise
      except Exception as e:  # orbax raises many types for missing/truncated files
        if "tree structures do not match" in str(e):  # the config changed, not the files
          raise ConfigMismatchError(
              f"checkpoint {self.directory}/{step} does not match this config's model or "
              "optimizer (e.g. another attention variant, model size or optimizer chain): resume "
              "with the config saved in config.json, or fine-tune from it with config.init.workdir "
              f"and a new --workdir. orbax: {str(e)[:500]}") from None
        message = (f"checkpoint {self.directory}/{step} cannot be restored "
                   f"({type(e).__name__}: {str(e)[:300]}); skipping it")
        if move_aside and jax.process_index() == 0:
          aside = os.path.join(self.workdir, "corrupt_checkpoints", f"{step}-{int(time.time())}")
          os.makedirs(os.path.dirname(aside), exist_ok=True)
          shutil.move(os.path.join(self.directory, str(step)), aside)
          message += f" (moved to {aside})"
        warnings.warn(message + ".", stacklevel=2)
        logging.warning(message)
        if move_aside:
          self.manager.reload()
    return None, None


def read_config(workdir: str):
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise ValueError(f"{path} does not exist: {workdir} is not a training workdir.")
  with open(path) as f:
    return config_lib.from_json(f.read())


def abstract_model(cfg):
  return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))


def load_model(workdir: str, step: int | None = None, *, overrides: dict | None = None,
               mesh: jax.sharding.Mesh | None = None
               ) -> tuple[Transformer, ml_collections.ConfigDict]:
  """Restores a trained Transformer from `workdir` with its saved config.

  Args:
    workdir: a training workdir (the `workdir` of `train`).
    step: a checkpoint step; None takes the latest one that restores (a corrupt one is
      skipped with a warning).
    overrides: TransformerConfig fields to change, e.g. {'rope_theta': 5e5,
      'implementation': 'xla'}; 'attention' switches the variant after loading
      (`Transformer.set_variant`), so a softmax checkpoint can be evaluated as qwen_logn, or
      as SSMax with s = 1/mean(log n).
    mesh: shard the parameters over this mesh by their logical names (default: one device).

  Returns:
    (model, config): config is the run's ml_collections config with config.model updated to
    the returned model (its attention variant in effect and the overrides) and
    config.restored_step the step restored.

  Raises:
    ValueError: if workdir is not a training workdir, an override is not a model field, or
      no checkpoint (or not `step`) can be restored.
  """
  config = read_config(workdir)
  ckpt = Checkpointer(workdir, read_only=True)
  overrides = dict(overrides or {})
  unknown = set(overrides) - set(config.model.keys())
  if unknown:
    raise ValueError(f"overrides {sorted(unknown)} are not model config fields; choose from "
                     f"{sorted(config.model.keys())}.")
  new_attention = overrides.pop("attention", None)
  base_cfg = config_lib.model_config(config)

  def restore(step):
    meta = ckpt.restore_meta(step)
    cfg = dataclasses.replace(base_cfg, attention=meta["attention"], **overrides)
    graphdef, abstract = nnx.split(abstract_model(cfg))
    if mesh is None:
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      shardings = jax.tree.map(lambda _: device, abstract)
    else:
      shardings = mesh_lib.state_shardings(abstract, mesh)
    params = ckpt.restore(step, params=(abstract, shardings))["params"]
    return nnx.merge(graphdef, params)

  if step is None:
    step, model = ckpt.restore_latest(restore, move_aside=False)
    if model is None:
      raise ValueError(f"no checkpoint in {ckpt.directory} can be restored.")
  else:
    if step not in ckpt.steps():
      raise ValueError(f"step {step} is not among the checkpoints of {workdir}: {ckpt.steps()}.")
    model = restore(step)
  ckpt.close()
  if new_attention is not None and new_attention != model.config.attention:
    model.set_variant(new_attention, s_init=config.model.s_init)
  for key, value in dataclasses.asdict(model.config).items():
    config.model[key] = value
  config.model.l_train = model.config.l_train
  with config.unlocked():
    config.restored_step = int(step)  # the step actually restored (a corrupt latest is skipped)
  return model, config
