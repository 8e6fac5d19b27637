"""The training loop: checks, mesh, state, restore or init, steps, logging, checkpoints."""
import contextlib
import dataclasses
import os
import signal
import time

import jax
import ml_collections
import numpy as np
from flax import nnx

from ssmax_jax import data as data_lib
from ssmax_jax.models.transformer import Transformer, count_params, generate
from ssmax_jax.train import checkpoint as ckpt_lib
from ssmax_jax.train import config as config_lib
from ssmax_jax.train import mesh as mesh_lib
from ssmax_jax.train import profiling
from ssmax_jax.train import workdir as workdir_lib
from ssmax_jax.train.data import make_batches, to_global
from ssmax_jax.train.metrics import MetricsWriter
from ssmax_jax.train.optim import make_optimizer, make_schedule
from ssmax_jax.train.step import flops_per_token, loss_options, make_eval_step, make_train_step

# Dense bf16 peak TFLOP/s per device, for MFU (config.train.peak_tflops overrides).
PEAK_TFLOPS = (("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("TPU v6", 918.0),
               ("TPU v5p", 459.0), ("TPU v5", 197.0), ("TPU v4", 275.0))
# Fields a fine-tune may change without changing the parameters' shapes.
_ARCHITECTURE = ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "d_ff",
                 "vocab_pad_multiple")


class NonFiniteLossError(RuntimeError):
  """The loss or gradient norm became NaN/Inf; the last good checkpoint is kept."""


def _peak_flops(config) -> float | None:
  per_device = config.train.peak_tflops
  if per_device is None:
    kind = jax.devices()[0].device_kind
    per_device = next((v for k, v in PEAK_TFLOPS if k in kind), None)
  return None if per_device is None else per_device * 1e12 * jax.device_count()


def _past(deadline: float) -> bool:
  """Whether the wall-clock deadline has passed, as process 0 sees it (every process stops at
  the same step, so none waits in a collective for the others)."""
  past = np.asarray(time.monotonic() > deadline)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    past = multihost_utils.broadcast_one_to_all(past)
  return bool(past)


def _check_run(config, cfg, mesh):
  """Checks that need the devices: batch split, vocabulary, the init run."""
  t = config.train
  shards = mesh_lib.batch_shards(mesh)
  if t.batch_size % (t.grad_accum_steps * shards):
    raise ValueError(
        f"config.train.batch_size={t.batch_size} must be divisible by grad_accum_steps "
        f"({t.grad_accum_steps}) x the batch shards of the mesh (data x fsdp = {shards}); "
        "change the batch size, grad_accum_steps or config.mesh.shape.")
  if t.seq_len % mesh.shape["context"]:
    raise ValueError(f"config.train.seq_len={t.seq_len} must be divisible by the context axis "
                     f"of config.mesh.shape ({mesh.shape['context']}): it splits the sequence.")
  if t.batch_size % jax.process_count():
    raise ValueError(f"config.train.batch_size={t.batch_size} must be divisible by the "
                     f"number of processes ({jax.process_count()}).")
  if t.loss_implementation == "pallas" and jax.default_backend() == "tpu":
    raise ValueError("config.train.loss_implementation='pallas' is a GPU (Triton) kernel: use "
                     "'xla' on TPU.")
  if t.loss_implementation == "pallas" and mesh.shape["tensor"] > 1:
    raise ValueError("config.train.loss_implementation='pallas' needs whole rows of logits on "
                     f"each device, but config.mesh.shape splits the vocabulary over "
                     f"{mesh.shape['tensor']} tensor shards: use tensor 1 or 'xla'.")
  if config.init.workdir:
    init_cfg = config_lib.model_config(ckpt_lib.read_config(config.init.workdir))
    for name in _ARCHITECTURE:
      if getattr(init_cfg, name) != getattr(cfg, name):
        raise ValueError(f"config.model.{name}={getattr(cfg, name)} differs from the init "
                         f"checkpoint's {getattr(init_cfg, name)} ({config.init.workdir}); "
                         "use the same architecture to fine-tune.")


@contextlib.contextmanager
def _threefry_kernel_on_gpu():
  """Draws the initial parameters with JAX's prebuilt CUDA threefry kernel on GPUs.

  XLA otherwise inlines the hash into every initializer's fusion and compiles each one: the
  paper model's init took 186 s to compile on an H200 (its train step, 9-13 s). Same bits;
  no effect on other platforms.
  """
  previous = jax.config.jax_threefry_gpu_kernel_lowering
  jax.config.update("jax_threefry_gpu_kernel_lowering", True)
  try:
    yield
  finally:
    jax.config.update("jax_threefry_gpu_kernel_lowering", previous)


def abstract_state(cfg, tx, mesh, seed):
  """(make, graphdef, abstract state, its shardings under `mesh`) of the model and its
  optimizer: make() builds them; the rest are shapes only, nothing is allocated."""
  def make():
    model = Transformer(cfg, rngs=nnx.Rngs(seed))
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)
  graphdef, abstract = nnx.split(nnx.eval_shape(make))
  return make, graphdef, abstract, mesh_lib.state_shardings(abstract, mesh)


def train_step_fn(graphdef, treedef, leaf_shardings, mesh, config):
  """The jitted step (step.make_train_step) for a state of that structure on `mesh`."""
  return make_train_step(
      graphdef, treedef, leaf_shardings, mesh_lib.batch_sharding(mesh),
      mesh_lib.replicated(mesh), grad_accum_steps=config.train.grad_accum_steps,
      loss_kwargs=loss_options(config))


def eval_step_fn(graphdef, treedef, leaf_shardings, mesh, config):
  """The jitted validation loss (step.make_eval_step) for that state on `mesh`."""
  return make_eval_step(graphdef, treedef, leaf_shardings, mesh_lib.batch_sharding(mesh),
                        mesh_lib.replicated(mesh), loss_kwargs=loss_options(config))


def _eval_batches(config) -> list[dict] | None:
  """This process's validation batches (None when train.eval_every is 0), read before training:
  train.eval_batches batches of batch_size // grad_accum_steps sequences."""
  t, d = config.train, config.data
  if not t.eval_every:
    return None
  try:
    return data_lib.make_eval_batches(
        d.source, d.tokenizer, t.seq_len, t.batch_size // t.grad_accum_steps,
        shard_index=jax.process_index(), shard_count=jax.process_count(), packing=d.packing,
        num_batches=t.eval_batches)
  except ValueError as e:
    raise ValueError(f"config.train.eval_every={t.eval_every} needs the validation split of "
                     f"config.data.source={d.source!r}: {e} Or set config.train.eval_every=0 "
                     "to train without evaluations.") from None


class _State:
  """The model and optimizer as (graphdef, sharded state), with the jitted step for them."""

  def __init__(self, model, optimizer, mesh, config):
    self.mesh, self.config = mesh, config
    self.set(*nnx.split((model, optimizer)))

  @classmethod
  def init(cls, cfg, tx, mesh, config, restore=None):
    """Fresh parameters, or restore(abstract_state, shardings) -> state (from a checkpoint)."""
    self = cls.__new__(cls)
    self.mesh, self.config = mesh, config
    make, graphdef, abstract, shardings = abstract_state(cfg, tx, mesh, config.seed)
    if restore is None:
      with _threefry_kernel_on_gpu():
        state = jax.jit(lambda: nnx.state(make()), out_shardings=shardings)()
    else:
      state = restore(abstract, shardings)
    self.set(graphdef, state)
    return self

  def set(self, graphdef, state):
    self.graphdef = graphdef
    shardings = mesh_lib.state_shardings(state, self.mesh)
    self.leaves, self.treedef = jax.tree.flatten(jax.device_put(state, shardings))
    self.step_fn = train_step_fn(graphdef, self.treedef, jax.tree.leaves(shardings), self.mesh,
                                 self.config)
    self.eval_fn = eval_step_fn(graphdef, self.treedef, jax.tree.leaves(shardings), self.mesh,
                                self.config)  # compiled on its first call

  @property
  def state(self):
    """nnx.state((model, optimizer)), rebuilt from the leaves the step keeps."""
    return jax.tree.unflatten(self.treedef, self.leaves)

  def step(self, batch) -> dict:
    """One train step on a global batch; returns its metrics (device arrays)."""
    self.leaves, metrics = self.step_fn(self.leaves, batch)
    return metrics

  def eval_loss(self, batches) -> float:
    """The mean loss per token over global `batches` (no gradients, no update)."""
    sums = jax.device_get([self.eval_fn(self.leaves, b) for b in batches])
    tokens = sum(float(m["tokens"]) for m in sums)
    return sum(float(m["loss_sum"]) for m in sums) / max(tokens, 1.0)

  def objects(self):
    return nnx.merge(self.graphdef, self.state)

  @property
  def attention(self) -> str:
    return self.objects()[0].config.attention


def _switch_variant(st: _State, variant, s_init, tx):
  """Variant (f): new learned parameters (s, b) get fresh Adam moments; the others keep theirs."""
  model, optimizer = st.objects()
  old = {path: v.get_value() for path, v in nnx.to_flat_state(nnx.state(optimizer))}
  model.set_variant(variant, s_init=s_init)
  new_opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  flat = [(path, v.replace(old[path]) if path in old else v)
          for path, v in nnx.to_flat_state(nnx.state(new_opt))]
  nnx.update(new_opt, nnx.from_flat_state(flat))
  st.set(*nnx.split((model, new_opt)))


def _restore(ckpt, step, cfg, tx, mesh, config, batches):
  meta = ckpt.restore_meta(step)
  switched = 0 <= config.switch.step < step
  expected = config.switch.attention if switched else cfg.attention
  if meta["attention"] != expected:
    raise ckpt_lib.ConfigMismatchError(
        f"checkpoint {ckpt.directory}/{step} has attention {meta['attention']!r} but the config "
        f"gives {expected!r} at that step. To move a trained model to another variant, fine-tune "
        "with config.init.workdir and a new --workdir (variant e), or set config.switch (f).")

  def restore(abstract, shardings):
    restored = ckpt.restore(step, params=(abstract[0], shardings[0]),
                            opt_state=(abstract[1], shardings[1]), data_iter=batches)
    state = jax.tree.map(lambda x: x, abstract)  # a copy to fill
    for key, name in ((0, "params"), (1, "opt_state")):
      value = restored[name]
      nnx.replace_by_pure_dict(state[key], nnx.to_pure_dict(value) if isinstance(
          value, nnx.State) else value)
    for key, name in ((0, "params"), (1, "opt_state")):
      ckpt_lib.verify_digests(state[key], meta.get("digests", {}).get(name),
                              f"checkpoint {ckpt.directory}/{step} ({name})")
    return state

  return _State.init(dataclasses.replace(cfg, attention=meta["attention"]), tx, mesh, config,
                     restore=restore)


def _from_init_run(cfg, tx, mesh, config):
  """Fine-tuning / variant (e): parameters of config.init's checkpoint, a fresh optimizer."""
  keep = ("rope_theta", "implementation", "dtype", "param_dtype", "remat", "l_train",
          "fixed_s", "floor_scale", "attn_scale", "norm_eps")
  model, _ = ckpt_lib.load_model(config.init.workdir, config.init.step, mesh=mesh,
                                 overrides={k: getattr(cfg, k) for k in keep})
  if model.config.attention != cfg.attention:
    model.set_variant(cfg.attention, s_init=cfg.s_init)
  return _State(model, nnx.Optimizer(model, tx, wrt=nnx.Param), mesh, config)


def _print_sample(model, config):
  tokenizer = data_lib.get_tokenizer(config.data.tokenizer)
  prompt = tokenizer.encode(config.sample.prompt or "\n")[None, :]
  tokens = generate(model, prompt, config.sample.num_tokens,
                    temperature=config.sample.temperature, seed=config.seed)
  print("sample:\n" + tokenizer.decode(np.asarray(tokens[0])), flush=True)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains the run in `workdir`, or resumes it from its latest checkpoint.

  Writes config.json, checkpoints and metrics (metrics.jsonl, TensorBoard) into workdir
  (the layout is in ssmax_jax/train/checkpoint.py). Stops after config.train.num_steps, at
  config.train.max_minutes or on SIGTERM, saving a checkpoint each time.

  Args:
    config: a training config (`default_config` with changes).
    workdir: the run's directory, created if needed.

  Returns:
    {'step': the last step, 'loss': its loss, 'stopped': True if stopped before num_steps}.

  Raises:
    ValueError: on a bad config or data, before any training.
    NonFiniteLossError: when the loss or gradient norm becomes NaN/Inf (the last good
      checkpoint stays the latest).
  """
  config = config_lib.resolve_vocab_size(config)  # a copy; vocab_size None -> the data's
  cfg = config_lib.validate(config)
  workdir_lib.check_path(workdir)
  if config.distributed:
    jax.distributed.initialize()
  mesh = mesh_lib.make_mesh(config.mesh.shape)
  _check_run(config, cfg, mesh)
  eval_batches = _eval_batches(config)  # raises when eval_every > 0 and there is no validation
  batches = make_batches(config)  # raises on missing, empty or corrupt data
  os.makedirs(workdir, exist_ok=True)
  lock = workdir_lib.WorkdirLock(workdir) if jax.process_index() == 0 else None
  try:
    workdir_lib.check_resume(workdir, config)  # before anything in the workdir changes
    return _run(config, cfg, mesh, batches, eval_batches, workdir)
  finally:
    batches.close()  # stops grain's worker processes, also when the resume is refused
    if lock is not None:
      lock.release()


_UNREADABLE_FIX = ("Check the filesystem and the files (a copy in progress?), train in a new "
                   "--workdir, or set config.checkpoint.restart_if_unreadable=True to move them "
                   "to corrupt_checkpoints/ and start again from step 0.")


def _nonfinite_message(bad_step, ckpt, last_saved, restored_step):
  kept = (f"the last good checkpoint is step {last_saved} in {ckpt.directory}"
          if last_saved is not None else "no checkpoint was saved")
  message = f"loss or gradient norm is NaN/Inf at step {bad_step}; training stopped and {kept}."
  if restored_step is not None and last_saved == restored_step:  # a rerun would repeat it
    message += (f" It came after restoring checkpoint {ckpt.directory}/{restored_step} (its "
                "checksums matched), before the next save: resuming repeats it. Move that step's "
                "directory to corrupt_checkpoints/ to resume from the one before, or start a new "
                "--workdir from it with other settings (config.init.workdir).")
  return message


def _evaluates(t, step) -> bool:
  return t.eval_every > 0 and (step % t.eval_every == 0 or step == t.num_steps)


def _run(config, cfg, mesh, batches, eval_batches, workdir) -> dict:
  """train() past its checks, with the workdir locked."""
  t = config.train
  tx = make_optimizer(config.optimizer, t.num_steps)
  schedule = make_schedule(config.optimizer, t.num_steps)
  ckpt = ckpt_lib.Checkpointer(workdir, keep=config.checkpoint.keep,
                               async_save=config.checkpoint.async_save)
  try:
    step, st = ckpt.restore_latest(
        lambda s: _restore(ckpt, s, cfg, tx, mesh, config, batches),
        restart_if_unreadable=config.checkpoint.restart_if_unreadable, fix=_UNREADABLE_FIX)
  except BaseException:
    ckpt.close()  # orbax's threads, else they outlive the refused run
    raise
  restored_step = step
  if st is None:
    step = 0
    st = _from_init_run(cfg, tx, mesh, config) if config.init.workdir else _State.init(
        cfg, tx, mesh, config)
  if jax.process_index() == 0:
    workdir_lib.save_start_config(workdir, config, step)
  num_params = count_params(st.objects()[0])
  flops_tok = flops_per_token(cfg, num_params, t.seq_len)
  peak = _peak_flops(config)
  writer = MetricsWriter(workdir, t.num_steps, step, progress_bar=t.progress_bar)
  if step == 0:
    writer.log_config(config)
  writer.message(f"{num_params:,} parameters, attention {st.attention!r}, mesh "
                 f"{dict(mesh.shape)}, starting at step {step} of {t.num_steps}.")
  stop = {"reason": None}  # set by SIGTERM or the time limit; the loop saves and stops
  deadline = time.monotonic() + 60.0 * t.max_minutes if t.max_minutes > 0 else None
  previous = signal.getsignal(signal.SIGTERM)
  signal.signal(signal.SIGTERM, lambda signum, _: stop.update(reason=f"signal {signum}"))
  batch_sharding = mesh_lib.batch_sharding(mesh)
  tokens_per_step = t.batch_size * t.seq_len
  last_saved = step if ckpt.steps() else None
  pending, last = [], {"loss": float("nan")}
  t_mark, step_mark = None, step
  profile_dir = os.path.join(workdir, "profile")
  tracing = False  # a run resumed inside the profiled steps does not profile
  input_wait = 0.0  # seconds spent waiting for batches since t_mark: input-bound if near all
  try:
    with jax.set_mesh(mesh):
      while step < t.num_steps:
        if step == config.switch.step and st.attention != config.switch.attention:
          _switch_variant(st, config.switch.attention, config.switch.s_init, tx)
          writer.message(f"step {step}: attention switched to {config.switch.attention!r}.")
        t_input = time.perf_counter()
        batch = to_global(next(batches), batch_sharding)
        input_wait += time.perf_counter() - t_input
        if step == t.profile_at_step and jax.process_index() == 0:
          profiling.start_trace(profile_dir)
          tracing = True
        metrics = st.step(batch)
        step += 1
        if tracing and step == t.profile_at_step + t.profile_steps:
          tracing = False
          jax.block_until_ready(metrics)
          summary = profiling.device_time_by_kernel(profiling.stop_trace(profile_dir),
                                                    t.profile_steps)
          writer.message(f"profile of steps {t.profile_at_step + 1}-{step} ({profile_dir}):\n"
                         + profiling.format_summary(summary))
        pending.append((step, metrics))
        if t_mark is None:  # the first step includes compilation: time from its end
          jax.block_until_ready(metrics)
          t_mark, step_mark, input_wait = time.perf_counter(), step, 0.0
        if deadline is not None and step % t.log_every == 0 and _past(deadline):
          stop["reason"] = f"time limit of {t.max_minutes:g} min"
        save = (step % config.checkpoint.every_steps == 0 or step == t.num_steps
                or stop["reason"] is not None)
        evaluate = _evaluates(t, step)
        if not (save or evaluate or step % t.log_every == 0):
          continue
        values = jax.device_get(pending)  # the only host sync: every log_every steps
        pending = []
        bad = [s for s, m in values if not np.isfinite(m["loss"]) or not np.isfinite(
            m["grad_norm"])]
        if bad:
          raise NonFiniteLossError(_nonfinite_message(bad[0], ckpt, last_saved, restored_step))
        now = time.perf_counter()
        rate = (step - step_mark) * tokens_per_step / (now - t_mark) if step > step_mark else None
        waiting = input_wait / (now - t_mark) if step > step_mark else None
        t_mark, step_mark, input_wait = now, step, 0.0
        s_last, last = values[-1]
        record = {"step": s_last, "loss": float(last["loss"]),
                  "loss_mean": float(np.mean([m["loss"] for _, m in values])),
                  "grad_norm": float(last["grad_norm"]), "lr": float(schedule(s_last - 1)),
                  "tokens": float(last["tokens"]), "tokens_seen": step * tokens_per_step,
                  "tokens_per_s": rate,
                  "mfu": rate * flops_tok / peak if rate and peak else None,
                  "input_wait": waiting,
                  "attention": st.attention}
        for name in ("s", "b"):
          if name in last:
            record[name] = last[name]
        if evaluate:
          if not isinstance(eval_batches[0]["inputs"], jax.Array):
            eval_batches = [to_global(b, batch_sharding) for b in eval_batches]
          record["eval_loss"] = st.eval_loss(eval_batches)
          t_mark = time.perf_counter()  # the evaluation's time is not the training's
        writer.write(record)
        if save:
          meta = {"step": step, "attention": st.attention, "seed": config.seed}
          state = st.state  # rebuilt from the leaves once: the model's part, the optimizer's
          ckpt.save(step, state[0], state[1], meta, batches)
          last_saved = step
        if stop["reason"] is not None:
          writer.message(f"{stop['reason']}: saved step {step} and stopped.")
          break
  finally:
    if tracing:  # stopped (signal, NaN) inside the profiled steps: close the trace
      profiling.stop_trace(profile_dir)
    signal.signal(signal.SIGTERM, previous)
    ckpt.wait()
    ckpt.close()
    writer.close()
  if config.sample.num_tokens > 0 and jax.process_index() == 0:
    _print_sample(st.objects()[0], config)
  return {"step": step, "loss": float(last["loss"]), "stopped": stop["reason"] is not None}
