"""The training config schema (ml_collections) and its validation.

Every config file starts from `default_config()` and changes values; a key that is not in the
schema is an error. `validate` raises a ValueError naming the key and the fix before any compute.
"""
import dataclasses
import json
import os
import warnings

import ml_collections
from jax._src import xla_bridge  # backends_are_initialized: no public equivalent
from ml_collections import config_dict

from ssmax_jax.models.transformer import TransformerConfig
from ssmax_jax.ops.cross_entropy import IMPLEMENTATIONS as LOSS_IMPLEMENTATIONS
from ssmax_jax.ops.cross_entropy import LOGITS_DTYPES

SCHEDULES = ("constant", "cosine")
DATA_KINDS = ("lm", "needle")


def _model_defaults() -> ml_collections.ConfigDict:
  fields = {}
  for f in dataclasses.fields(TransformerConfig):
    value = f.default
    if value is None:  # typed placeholders so that --config.model.X=... can set them
      value = config_dict.placeholder({"num_kv_heads": int, "s_init": float}.get(f.name, str))
    fields[f.name] = value
  # None: the data's vocabulary (the tokenizer's, `resolve_vocab_size`); larger pads it.
  fields["vocab_size"] = config_dict.placeholder(int)
  fields["l_train"] = config_dict.placeholder(int)  # None: train.seq_len
  return ml_collections.ConfigDict(fields)


def default_config() -> ml_collections.ConfigDict:
  """The schema with defaults: the paper's model, small data and step counts.

  Every config file (configs/*.py) starts from it and changes values; the groups are seed,
  distributed, xla_flags, model (the `TransformerConfig` fields), data, train, optimizer,
  checkpoint, mesh, init, switch and sample, each key commented where it is set.

  Returns:
    A new ml_collections.ConfigDict (`validate` checks a changed one).
  """
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.distributed = False  # True: jax.distributed.initialize() (one process per host)
  # Appended to XLA_FLAGS by the launcher before JAX starts its backends (apply_xla_flags);
  # paper_162m turns Triton GEMMs off (cuBLAS only), faster on the H200 (benchmarks/gpu_ab.sh).
  c.xla_flags = ""
  c.model = _model_defaults()

  c.data = ml_collections.ConfigDict()
  c.data.kind = "lm"  # 'lm': next-token prediction on data.source; 'needle': retrieval examples
  c.data.source = "shakespeare"  # 'shakespeare', a prep_data directory or a flat token file
  # 'byte' | 'gpt2' | the path of a Hugging Face tokenizer.json: for a prep_data directory, its
  # copy DIR/tokenizer.json (which records the end-of-text token)
  c.data.tokenizer = "byte"
  c.data.packing = False  # True: documents packed with segment ids (n restarts per document)
  c.data.worker_count = 0
  c.data.seed = 0
  c.data.needle_min_context = 256  # needle: context lengths drawn from [min, seq_len + 1]

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 100
  c.train.batch_size = 32  # global, in sequences, summed over accumulation steps
  c.train.seq_len = 1024
  c.train.grad_accum_steps = 1
  c.train.loss_chunk_tokens = 8192  # the loss materialises [chunk, vocab] logits at a time
  # Storage of those logits: 'float32', or 'bfloat16' (half the loss's memory traffic, as in
  # most training stacks); the loss itself is always computed in float32
  # (ssmax_jax/ops/cross_entropy).
  c.train.loss_logits_dtype = "float32"
  # 'pallas': one kernel reads each chunk's logits twice instead of four times (GPU; data and
  # fsdp meshes, not a vocabulary split over the tensor axis; chunks of a multiple of its
  # BLOCK_ROWS tokens per device), an error where it does not apply; 'xla'; or None (alias
  # 'auto'): the kernel where it applies, XLA elsewhere (ssmax_jax/ops/cross_entropy/api.py).
  c.train.loss_implementation = config_dict.placeholder(str)
  c.train.log_every = 10
  # The loss on data.source's validation split every eval_every steps and at the last step
  # (metrics.jsonl eval_loss, TensorBoard eval/loss); 0: never. It uses the first eval_batches
  # batches of batch_size // grad_accum_steps sequences, the same ones each time.
  c.train.eval_every = 0
  c.train.eval_batches = 8
  c.train.peak_tflops = config_dict.placeholder(float)  # per device; None: known devices only
  c.train.progress_bar = True  # on a terminal; a log file gets one line per logged step
  # Trace profile_steps steps from this step on (-1: never) into WORKDIR/profile and print device
  # time by kernel (ssmax_jax/train/profiling.py); the trace opens in TensorBoard/XProf.
  c.train.profile_at_step = -1
  c.train.profile_steps = 3
  # Stop (saving a checkpoint) at the first log step after this many minutes of training; 0: no
  # limit. A run stopped so resumes like one stopped by SIGTERM.
  c.train.max_minutes = 0.0

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 6e-4
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.1  # on parameters of rank >= 2 only
  c.optimizer.clip_norm = 1.0
  c.optimizer.schedule = "constant"  # after warm-up: 'constant' | 'cosine'
  c.optimizer.warmup_steps = 0
  c.optimizer.final_lr_ratio = 0.1  # cosine: lr at the last step / lr

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1, 1)  # (data, fsdp, [context,] tensor); one -1 takes the rest

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 1000
  c.checkpoint.keep = 3
  c.checkpoint.async_save = True
  # When no checkpoint of the workdir can be restored (damaged files, another filesystem's
  # copy), training stops with an error; True moves them all to corrupt_checkpoints/ and starts
  # again from step 0.
  c.checkpoint.restart_if_unreadable = False

  # Fine-tuning and variant (e): start from the parameters of another run's checkpoint (its
  # optimizer state is not used). A softmax checkpoint with model.attention='ssmax' gets s added.
  c.init = ml_collections.ConfigDict()
  c.init.workdir = ""
  c.init.step = config_dict.placeholder(int)  # None: the latest

  # Variant (f): switch every layer to `attention` at `step` (s enters the optimizer state then).
  c.switch = ml_collections.ConfigDict()
  c.switch.step = -1  # -1: never
  c.switch.attention = "ssmax"
  c.switch.s_init = config_dict.placeholder(float)  # None: 1 / mean(log n, n = 1..l_train)

  c.sample = ml_collections.ConfigDict()
  c.sample.prompt = ""
  c.sample.num_tokens = 0  # > 0: print a sample of this many tokens after training
  c.sample.temperature = 0.8  # 0: greedy
  return c


# One line per key for --print_config (model.* come from TransformerConfig's docstring).
DESCRIPTIONS = {
    "seed": "seed of the parameters' initialisation",
    "distributed": "True: jax.distributed.initialize() (one process per host)",
    "xla_flags": "appended to XLA_FLAGS before JAX starts its backends",
    "model.l_train": "the training length (default s_init, qwen_logn); None: train.seq_len",
    "data.kind": "'lm': next-token prediction on data.source; 'needle': retrieval examples",
    "data.source": "'shakespeare' (embedded), a prep_data directory or a flat token file",
    "data.tokenizer": "'byte', 'gpt2' or a Hugging Face tokenizer.json path",
    "data.packing": "True: documents packed with segment ids (n restarts per document)",
    "data.worker_count": "grain worker processes (0: in the main process)",
    "data.seed": "seed of the data order",
    "data.needle_min_context": "needle: context lengths drawn from [this, seq_len + 1]",
    "train.num_steps": "optimizer updates to train for",
    "train.batch_size": "sequences per update, global, summed over accumulation steps",
    "train.seq_len": "tokens per sequence",
    "train.grad_accum_steps": "micro-batches per update",
    "train.loss_chunk_tokens": "tokens whose [chunk, vocab] logits exist at a time",
    "train.loss_logits_dtype": "storage of the logits: 'float32' or 'bfloat16'",
    "train.loss_implementation": "None (choose), 'xla' or 'pallas' (GPU kernel)",
    "train.log_every": "steps between logged metrics",
    "train.eval_every": "steps between validation losses (0: none)",
    "train.eval_batches": "validation batches per evaluation",
    "train.peak_tflops": "per device, for MFU; None: known devices only",
    "train.progress_bar": "a progress bar on a terminal (plain lines otherwise)",
    "train.profile_at_step": "trace profile_steps steps from this step (-1: never)",
    "train.profile_steps": "steps traced by profile_at_step",
    "train.max_minutes": "stop with a checkpoint after this many minutes (0: no limit)",
    "optimizer.lr": "peak learning rate (AdamW)",
    "optimizer.b1": "AdamW's first-moment decay",
    "optimizer.b2": "AdamW's second-moment decay",
    "optimizer.eps": "AdamW's epsilon",
    "optimizer.weight_decay": "decoupled weight decay, on parameters of rank >= 2",
    "optimizer.clip_norm": "global gradient-norm clipping",
    "optimizer.schedule": "after warm-up: 'constant' or 'cosine'",
    "optimizer.warmup_steps": "linear warm-up steps",
    "optimizer.final_lr_ratio": "cosine: lr at the last step / lr",
    "mesh.shape": "(data, fsdp, context, tensor) devices, or 3 as (data, fsdp, tensor); "
                  "one -1 takes the rest",
    "checkpoint.every_steps": "steps between checkpoints",
    "checkpoint.keep": "checkpoints kept",
    "checkpoint.async_save": "save in the background",
    "checkpoint.restart_if_unreadable": "no readable checkpoint: True restarts from step 0",
    "init.workdir": "start from another run's parameters (fine-tuning; variant e)",
    "init.step": "that run's checkpoint step; None: the latest",
    "switch.step": "switch every layer's attention at this step (-1: never; variant f)",
    "switch.attention": "the variant switched to",
    "switch.s_init": "s after the switch; None: 1 / mean(log n, n = 1..l_train)",
    "sample.prompt": "prompt of the sample printed after training",
    "sample.num_tokens": "tokens sampled after training (0: none)",
    "sample.temperature": "that sample's temperature (0: greedy)",
}


def _model_descriptions() -> dict:
  """model.<field>: the first line of each field in TransformerConfig's Attributes section."""
  lines = [l for l in TransformerConfig.__doc__.split("Attributes:")[1].splitlines() if l.strip()]
  indent = len(lines[0]) - len(lines[0].lstrip())  # a field's line; continuations go deeper
  found, name = {}, None
  for line in lines:
    field, sep, text = line.strip().partition(": ")
    if sep and field.isidentifier() and len(line) - len(line.lstrip()) == indent:
      name = f"model.{field}"
      found[name] = text
    elif name:
      found[name] += " " + line.strip()
  return found


def describe(config: ml_collections.ConfigDict) -> str:
  """Every key of `config` with its value and description, one per line (--print_config)."""
  descriptions = {**_model_descriptions(), **DESCRIPTIONS}
  lines = []
  for key, value in sorted(_flat(config).items()):
    lines.append(f"{key} = {value!r}  # {descriptions.get(key, '(no description)')}")
  return "\n".join(lines)


# Keys a resume may change: they change neither what a checkpoint restores nor the batches and
# updates that follow it (how steps are laid out, logged, saved or profiled). Every other key
# must equal the checkpoint's config: a resume with another model, optimizer or data order is a
# new run (a new --workdir; config.init.workdir to start from these parameters).
RESUMABLE_KEYS = frozenset({
    "distributed", "xla_flags", "mesh.shape",
    "train.num_steps",  # except with a cosine schedule, whose decay it sets (resume_changes)
    "train.grad_accum_steps", "train.loss_chunk_tokens", "train.loss_implementation",
    "train.log_every", "train.peak_tflops", "train.progress_bar", "train.profile_at_step",
    "train.profile_steps", "train.max_minutes",
    "train.eval_every", "train.eval_batches",  # no effect on parameters, batches or RNG
    "model.implementation", "model.norm_implementation", "model.remat",
    "model.remat_policy",
    "checkpoint.every_steps", "checkpoint.keep", "checkpoint.async_save",
    "checkpoint.restart_if_unreadable",
    "init.workdir", "init.step",  # read at step 0 only
    "sample.prompt", "sample.num_tokens", "sample.temperature",
})
# Not resumable although it changes no parameter: grain interleaves its workers' outputs, so
# the batches after a restore depend on data.worker_count (0 and 2 workers give other batches).


def _flat(config, prefix="") -> dict:
  flat = {}
  for key, value in config.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      flat.update(_flat(value, f"{prefix}{key}."))
    else:
      flat[prefix + key] = tuple(value) if isinstance(value, list) else value
  return flat


def resume_changes(saved, config) -> list[tuple[str, object, object]]:
  """(key, saved value, new value) of each key that differs and may not change on resume."""
  resumable = set(RESUMABLE_KEYS)
  if "cosine" in (saved.optimizer.schedule, config.optimizer.schedule):
    resumable.discard("train.num_steps")
  old, new = _flat(saved), _flat(config)
  return [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
          if k not in resumable and old.get(k) != new.get(k)]


def apply_xla_flags(config: ml_collections.ConfigDict) -> str:
  """Appends config.xla_flags to the XLA_FLAGS environment variable.

  Flags the user set there come first and win. XLA reads the variable once, when JAX starts
  its backends, so call this before any JAX computation.

  Args:
    config: a training config (`default_config`).

  Returns:
    The new value of XLA_FLAGS.

  Raises:
    ValueError: if JAX's backends have started and the flags are not already in effect.
  """
  flags = config.get("xla_flags", "").split()
  current = os.environ.get("XLA_FLAGS", "").split()
  names = {f.split("=")[0] for f in current}
  new = [f for f in flags if f.split("=")[0] not in names]
  if new and xla_bridge.backends_are_initialized():
    raise ValueError(f"config.xla_flags {new} must be set before JAX starts its backends: run "
                     "through the launcher (ssmax-train, python -m experiments.train) or put "
                     "them in XLA_FLAGS.")
  if new:
    os.environ["XLA_FLAGS"] = " ".join(current + new)
  return os.environ.get("XLA_FLAGS", "")


def _check_keys(config, schema, prefix=""):
  for key in config.keys():
    name = prefix + key
    if key not in schema:
      raise ValueError(f"unknown config key {name!r}; known keys at this level: "
                       f"{', '.join(sorted(schema.keys()))}.")
    if isinstance(schema[key], ml_collections.ConfigDict):
      if not isinstance(config[key], (ml_collections.ConfigDict, dict)):
        raise ValueError(f"config key {name!r} must be a group of keys, got {config[key]!r}.")
      _check_keys(config[key], schema[key], name + ".")


def data_vocab_size(config: ml_collections.ConfigDict) -> tuple[int, str]:
  """(the number of token ids of config.data.tokenizer, its name): the data's vocabulary."""
  from ssmax_jax.data.tokenizers import get_tokenizer
  tokenizer = get_tokenizer(config.data.tokenizer)
  return tokenizer.vocab_size, tokenizer.name


def resolve_vocab_size(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` with model.vocab_size set: unset (None), the data's vocabulary; set, at
  least that (a larger one pads the embedding and the output layer).

  Raises:
    ValueError: if model.vocab_size is smaller than the data's vocabulary, naming both.
  """
  config = config.copy_and_resolve_references()
  data_vocab, name = data_vocab_size(config)
  if config.model.vocab_size is None:
    config.model.vocab_size = data_vocab
  elif config.model.vocab_size < data_vocab:
    raise ValueError(f"config.model.vocab_size={config.model.vocab_size} is smaller than the "
                     f"{name!r} tokenizer's {data_vocab} ids (the data's vocabulary): leave it "
                     f"unset to take {data_vocab}, or set it >= {data_vocab}.")
  return config


def model_config(config: ml_collections.ConfigDict) -> TransformerConfig:
  """The TransformerConfig of `config.model` (l_train None is train.seq_len; vocab_size None is
  the data's vocabulary, `resolve_vocab_size`).

  Raises:
    ValueError: on a bad architecture.
  """
  kw = dict(config.model)
  kw["l_train"] = kw.get("l_train") or config.train.seq_len
  if kw.get("vocab_size") is None:
    kw["vocab_size"] = data_vocab_size(config)[0]
  try:
    return TransformerConfig(**kw)
  except ValueError as e:
    raise ValueError(f"config.model: {e}") from None


def _positive(config, *names):
  for name in names:
    group, key = name.split(".")
    if config[group][key] < 1:
      raise ValueError(f"config.{name}={config[group][key]} must be >= 1.")


def validate(config: ml_collections.ConfigDict) -> TransformerConfig:
  """Checks `config` against the schema and itself, before any compute.

  Checks needing devices or data (mesh sizes, batch split, token ids) are in the trainer.

  Args:
    config: a training config (`default_config` with changes).

  Returns:
    The model's TransformerConfig.

  Raises:
    ValueError: naming the first bad key (unknown, out of range, inconsistent) and the fix.
  """
  _check_keys(config, default_config())
  cfg = model_config(config)
  _positive(config, "train.num_steps", "train.batch_size", "train.seq_len",
            "train.grad_accum_steps", "train.log_every", "train.loss_chunk_tokens",
            "checkpoint.every_steps", "checkpoint.keep", "train.profile_steps")
  bad = [f for f in config.xla_flags.split() if not f.startswith("--xla")]
  if bad:
    raise ValueError(f"config.xla_flags has {bad}: give XLA flags as '--xla_...=value' "
                     "separated by spaces.")
  t, o = config.train, config.optimizer
  if t.batch_size % t.grad_accum_steps:
    raise ValueError(f"config.train.batch_size={t.batch_size} must be divisible by "
                     f"config.train.grad_accum_steps={t.grad_accum_steps}.")
  if t.eval_every < 0 or t.eval_batches < 1:
    raise ValueError(f"config.train.eval_every={t.eval_every} must be >= 0 (0: no evaluation) "
                     f"and config.train.eval_batches={t.eval_batches} >= 1.")
  if t.eval_every and config.data.kind != "lm":
    raise ValueError(f"config.train.eval_every={t.eval_every} evaluates the language-model "
                     f"loss, but config.data.kind={config.data.kind!r}: set eval_every=0.")
  if t.max_minutes < 0:
    raise ValueError(f"config.train.max_minutes={t.max_minutes} must be >= 0 (0: no limit).")
  if t.profile_at_step < -1 or (t.profile_at_step >= 0
                                and t.profile_at_step + t.profile_steps > t.num_steps):
    raise ValueError(f"config.train.profile_at_step={t.profile_at_step} with profile_steps="
                     f"{t.profile_steps} must lie within the {t.num_steps} steps (or be -1).")
  if t.loss_logits_dtype not in LOGITS_DTYPES:
    raise ValueError(f"config.train.loss_logits_dtype={t.loss_logits_dtype!r}; choose one of "
                     f"{LOGITS_DTYPES}.")
  if t.loss_implementation not in (None, "auto", *LOSS_IMPLEMENTATIONS):
    raise ValueError(f"config.train.loss_implementation={t.loss_implementation!r}; choose one "
                     f"of {(None, *LOSS_IMPLEMENTATIONS)} (None: the fastest that fits).")
  if o.schedule not in SCHEDULES:
    raise ValueError(f"config.optimizer.schedule={o.schedule!r}; choose one of {SCHEDULES}.")
  if o.lr <= 0 or o.warmup_steps < 0 or o.clip_norm < 0 or o.weight_decay < 0:
    raise ValueError("config.optimizer: lr must be > 0 and warmup_steps, clip_norm, "
                     "weight_decay >= 0.")
  if config.data.kind not in DATA_KINDS:
    raise ValueError(f"config.data.kind={config.data.kind!r}; choose one of {DATA_KINDS}.")
  shape = tuple(config.mesh.shape)
  if len(shape) not in (3, 4) or shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"config.mesh.shape={shape} must be 4 sizes (data, fsdp, context, tensor) "
                     "or 3 (data, fsdp, tensor), each "
                     ">= 1 or one of them -1 (the remaining devices).")
  if config.switch.step >= 0:
    if config.switch.step >= t.num_steps:
      raise ValueError(f"config.switch.step={config.switch.step} must be < "
                       f"config.train.num_steps={t.num_steps} (or -1 for no switch).")
    TransformerConfig(**{**dict(config.model), "attention": config.switch.attention,
                         "l_train": cfg.l_train})
    if cfg.attention == config.switch.attention:
      raise ValueError(f"config.switch.attention={config.switch.attention!r} equals "
                       "config.model.attention: nothing to switch; set config.switch.step=-1.")
  return cfg


def to_json(config) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def from_json(text: str, source: str = "the saved config") -> ml_collections.ConfigDict:
  """A config saved by `to_json`, completed with the schema's defaults for keys it lacks.

  Keys it lacks, or has that the schema does not (a config of another version), are named in
  a warning: their defaults or their values are not what the saved run used.
  """
  config = default_config()
  saved = json.loads(text)
  schema_keys, saved_keys = set(_flat(config)), set(_flat(saved))
  for group, value in saved.items():
    if isinstance(value, dict) and group in config:
      for key, v in value.items():
        if key in config[group]:
          config[group][key] = tuple(v) if isinstance(v, list) else v
    elif group in config:
      config[group] = value
  unknown, missing = sorted(saved_keys - schema_keys), sorted(schema_keys - saved_keys)
  if unknown or missing:
    warnings.warn(f"{source} is from another version of the schema: "
                  + (f"unknown keys {unknown} ignored" if unknown else "")
                  + ("; " if unknown and missing else "")
                  + (f"missing keys {missing} take their defaults" if missing else "") + ".",
                  stacklevel=2)
  return config
