"""Orbax checkpoints of a run, and `load_model` to restore any of them for evaluation.

Layout of a workdir:
  config.json, configs/            the training config of each start (workdir.py)
  checkpoints/<step>/params        model parameters (nnx.State of nnx.Param, orbax PyTree)
  checkpoints/<step>/opt_state     optimizer state (nnx.State: step count, Adam moments)
  checkpoints/<step>/meta          JSON: step, attention variant in effect, seed, and a
                                   checksum of each saved array (verified on restore)
  checkpoints/<step>/data          the data iterator's state (grain, one file per process)
  corrupt_checkpoints/<step>       checkpoints that failed to restore or to verify, moved aside
  metrics.jsonl, tensorboard/      training metrics
"""
import contextlib
import dataclasses
import logging
import os
import shutil
import time
import warnings
import zlib

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from ssmax_jax.models.transformer import Transformer
from ssmax_jax.train import config as config_lib
from ssmax_jax.train import mesh as mesh_lib
from ssmax_jax.train import workdir as workdir_lib

CONFIG_FILE = workdir_lib.CONFIG_FILE


def _abstract_target(abstract_state, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_state, shardings)


class ConfigMismatchError(ValueError):
  """A checkpoint that is intact but does not fit the config: an error, never skipped."""


class DamagedCheckpointError(ValueError):
  """A checkpoint whose restored arrays differ from the checksums saved with it."""


def array_digests(tree) -> dict[str, str] | None:
  """'dtype:crc32' of each array of `tree` by its key path, from host copies of the values.

  orbax and tensorstore checksum only the zarr shard index, not the array bytes: a flipped
  byte restores silently. None with several processes (no process holds whole arrays).
  """
  if jax.process_count() > 1:
    return None
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  values = jax.device_get([_raw(leaf) for _, leaf in flat])
  return {jax.tree_util.keystr(path): f"{value.dtype}:{_crc32(value):08x}"
          for (path, _), value in zip(flat, values)}


def _raw(leaf):
  """RNG keys as their integer data (numpy cannot hold typed keys)."""
  if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
    return jax.random.key_data(leaf)
  return leaf


def _crc32(value) -> int:
  return zlib.crc32(np.ascontiguousarray(value).reshape(-1).view(np.uint8))


def verify_digests(tree, saved: dict | None, where: str):
  """Raises DamagedCheckpointError naming the arrays of `tree` whose checksum differs from
  `saved` (arrays restored to another dtype, by an override, are not compared)."""
  if not saved:
    return  # a checkpoint of an older version, or of several processes
  bad = [path for path, digest in (array_digests(tree) or {}).items()
         if path in saved and digest.split(":")[0] == saved[path].split(":")[0]
         and digest != saved[path]]
  if bad:
    raise DamagedCheckpointError(f"{where}: {len(bad)} arrays differ from their saved checksums "
                                 f"(e.g. {bad[:3]}): its files are damaged")


@contextlib.contextmanager
def _quiet_absl(prefix: str):
  """Drops absl log records that start with `prefix` while the block runs."""
  logger = logging.getLogger("absl")
  drop = lambda record: not record.getMessage().startswith(prefix)
  logger.addFilter(drop)
  try:
    yield
  finally:
    logger.removeFilter(drop)


class Checkpointer:
  """An orbax CheckpointManager over workdir/checkpoints (async, keeping the last `keep`)."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, "checkpoints")
    if read_only and not os.path.isdir(self.directory):
      raise ValueError(f"{workdir} has no checkpoints/ directory: not a training workdir, or "
                       "no checkpoint was saved yet.")
    # Read-only: no keep count or save interval, which orbax would otherwise warn it ignores.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, enable_async_checkpointing=async_save,
        create=not read_only, read_only=read_only,
        **({"save_interval_steps": 0} if read_only else {}))
    with _quiet_absl("Given directory is read only"):  # said once per manager, and meant
      self.manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, params, opt_state, meta: dict, data_iter=None):
    meta = dict(meta, digests={"params": array_digests(params),
                               "opt_state": array_digests(opt_state)})
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

  def restore_latest(self, restore_fn, *, move_aside: bool = True,
                     restart_if_unreadable: bool = False, fix: str = ""):
    """Calls restore_fn(step) from the newest step down until one succeeds; returns
    (step, result), or (None, None) when there is no checkpoint. Each one that fails is
    reported with a warning and, when move_aside, moved to workdir/corrupt_checkpoints (so
    later saves can reuse its step). When none restores, a ValueError (ending with `fix`)
    and nothing moved, unless restart_if_unreadable: then all are moved and (None, None)."""
    failed = []
    for step in reversed(self.steps()):
      try:
        result = restore_fn(step)
      except ConfigMismatchError:
        raise
      except Exception as e:  # orbax raises many types for missing/truncated files
        _raise_if_config_changed(e, f"{self.directory}/{step}")
        failed.append((step, f"{type(e).__name__}: {str(e)[:300]}"))
        continue
      self._set_aside(failed, move_aside)
      return step, result
    if failed and not restart_if_unreadable:
      listed = "; ".join(f"{step}: {error}" for step, error in failed)
      raise ValueError(f"no checkpoint in {self.directory} can be restored ({listed}); "
                       "nothing was moved." + (f" {fix}" if fix else ""))
    self._set_aside(failed, move_aside)
    return None, None

  def _set_aside(self, failed, move_aside: bool):
    """Warns of each failed checkpoint and, when move_aside, moves it to corrupt_checkpoints."""
    for step, error in failed:
      message = f"checkpoint {self.directory}/{step} cannot be restored ({error}); skipping it"
      if move_aside and jax.process_index() == 0:
        aside = os.path.join(self.workdir, "corrupt_checkpoints", f"{step}-{int(time.time())}")
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        shutil.move(os.path.join(self.directory, str(step)), aside)
        message += f" (moved to {aside})"
      warnings.warn(message + ".", stacklevel=3)
      logging.warning(message)
    if failed and move_aside:
      self.manager.reload()


def _raise_if_config_changed(error: Exception, where: str):
  if "tree structures do not match" in str(error):  # the config changed, not the files
    raise ConfigMismatchError(
        f"checkpoint {where} does not match this config's model or optimizer (e.g. another "
        "attention variant, model size or optimizer chain): resume with the config saved in "
        "config.json, or fine-tune from it with config.init.workdir and a new --workdir. "
        f"orbax: {str(error)[:500]}") from None


read_config = workdir_lib.read_config


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
  ckpt = Checkpointer(workdir, read_only=True)
  overrides = dict(overrides or {})
  fields = config_lib.default_config().model.keys()
  unknown = set(overrides) - set(fields)
  if unknown:
    raise ValueError(f"overrides {sorted(unknown)} are not model config fields; choose from "
                     f"{sorted(fields)}.")
  new_attention = overrides.pop("attention", None)

  def restore(step):
    config = read_config(workdir, step)  # the config of the start that trained this step
    meta = ckpt.restore_meta(step)
    cfg = dataclasses.replace(config_lib.model_config(config), attention=meta["attention"],
                              **overrides)
    graphdef, abstract = nnx.split(abstract_model(cfg))
    if mesh is None:
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      shardings = jax.tree.map(lambda _: device, abstract)
    else:
      shardings = mesh_lib.state_shardings(abstract, mesh)
    params = ckpt.restore(step, params=(abstract, shardings))["params"]
    verify_digests(params, meta.get("digests", {}).get("params"),
                   f"checkpoint {ckpt.directory}/{step}")
    return nnx.merge(graphdef, params), config

  if step is None:
    step, restored = ckpt.restore_latest(restore, move_aside=False)
    if restored is None:
      raise ValueError(f"{ckpt.directory} holds no checkpoint yet.")
    model, config = restored
  else:
    if step not in ckpt.steps():
      raise ValueError(f"step {step} is not among the checkpoints of {workdir}: {ckpt.steps()}.")
    try:
      model, config = restore(step)
    except DamagedCheckpointError as e:
      raise DamagedCheckpointError(f"{e}; evaluate another step ({ckpt.steps()}).") from None
  ckpt.close()
  if new_attention is not None and new_attention != model.config.attention:
    model.set_variant(new_attention, s_init=config.model.s_init)
  for key, value in dataclasses.asdict(model.config).items():
    config.model[key] = value
  config.model.l_train = model.config.l_train
  with config.unlocked():
    config.restored_step = int(step)  # the step actually restored (a corrupt latest is skipped)
  return model, config
