"""Shared pieces of the evaluations: model specs and loading, checks before compute, JSON output.

Every evaluation writes one JSON file (FORMAT, with a `kind`) beside its PNG and markdown, so that
`experiments.report` can gather any set of them.
"""
import dataclasses
import datetime
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from ssmax_jax import ops

FORMAT = "ssmax_jax.eval.v1"
KINDS = ("loss_by_position", "needle", "attention", "learned_s")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A checkpoint to evaluate: `[LABEL=]WORKDIR[@STEP][:VARIANT]`.

  VARIANT switches the attention at inference (e.g. a softmax run evaluated as qwen_logn);
  the label defaults to the workdir's base name, plus ':VARIANT' when one is given.
  """
  workdir: str
  step: int | None = None
  variant: str | None = None
  label: str = ""

  @classmethod
  def parse(cls, text: str) -> "ModelSpec":
    label, rest = ("", text)
    if "=" in text:
      label, rest = text.split("=", 1)
    variant = None
    if ":" in rest:
      rest, variant = rest.rsplit(":", 1)
      ops.check_variant(variant)
    step = None
    if "@" in rest:
      rest, step_text = rest.rsplit("@", 1)
      if not step_text.isdigit():
        raise ValueError(f"model spec {text!r}: step {step_text!r} is not an integer; write "
                         "[LABEL=]WORKDIR[@STEP][:VARIANT].")
      step = int(step_text)
    if not rest:
      raise ValueError(f"model spec {text!r} has no workdir; write [LABEL=]WORKDIR[@STEP][:VARIANT].")
    if not label:
      label = os.path.basename(os.path.normpath(rest)) + (f":{variant}" if variant else "")
    return cls(rest, step, variant, label)


def parse_specs(texts) -> list[ModelSpec]:
  specs = [ModelSpec.parse(t) for t in texts if t]
  if not specs:
    raise ValueError("no model given: pass --models=[LABEL=]WORKDIR[@STEP][:VARIANT],...")
  labels = [s.label for s in specs]
  if len(set(labels)) != len(labels):
    raise ValueError(f"model labels {labels} repeat: give each model its own LABEL=.")
  return specs


def default_implementation(dtype="bfloat16"):
  """The attention backend for long contexts: XLA on CPU (tiny models), a flash kernel elsewhere.

  None lets the op pick cuDNN (or Pallas under decoding) on GPU for 16-bit inputs; float32 on
  GPU is sent to the Pallas kernel explicitly, since the op's default would be XLA (T x T).
  """
  platform = jax.default_backend()
  if platform == "cpu":
    return "xla"
  if platform == "gpu" and jnp.dtype(dtype) == jnp.float32:
    return "pallas"
  return None


def load(spec: ModelSpec, implementation="default"):
  """(model, config) of a spec through ssmax_jax.train.load_model; raises ValueError early.

  implementation: attention backend to evaluate with ('default': `default_implementation`).
  """
  from ssmax_jax.train import load_model, read_config  # evals sit beside train, above models
  if not os.path.isdir(spec.workdir):
    raise ValueError(f"workdir {spec.workdir!r} does not exist: pass a training workdir "
                     "(the --workdir of experiments.train).")
  saved = read_config(spec.workdir)
  if implementation == "default":
    implementation = default_implementation(saved.model.dtype)
  overrides = {"implementation": implementation}
  if spec.variant:
    overrides["attention"] = spec.variant
  return load_model(spec.workdir, spec.step, overrides=overrides)


def model_info(spec: ModelSpec, model, config) -> dict:
  cfg = model.config
  return dict(label=spec.label, workdir=os.path.abspath(spec.workdir),
              step=config.get("restored_step"),
              variant=cfg.attention,
              l_train=int(cfg.l_train), rope_theta=float(cfg.rope_theta),
              num_layers=cfg.num_layers, num_heads=cfg.num_heads, d_model=cfg.d_model,
              tokenizer=str(config.data.tokenizer), data_source=str(config.data.source))


# --- Memory -------------------------------------------------------------------------------------

def memory_limit_bytes(limit_gb: float | None = None) -> int:
  """Usable bytes: `limit_gb` if given, else 90% of the first device's memory (host RAM on CPU)."""
  if limit_gb:
    return int(limit_gb * 2**30)
  stats = None
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # backends without memory_stats
    stats = None
  if stats and stats.get("bytes_limit"):
    return int(0.9 * stats["bytes_limit"])
  return int(0.9 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def uses_dense_attention(cfg) -> bool:
  """True when attention would materialise T x T logits (the XLA backend)."""
  impl = cfg.implementation
  if impl is not None:
    return impl == "xla"
  platform = jax.default_backend()
  if platform == "cpu":
    return True
  if platform == "tpu":
    return False
  return jnp.dtype(cfg.dtype) == jnp.float32  # GPU: 16-bit inputs go to cuDNN or Pallas


def forward_bytes(model, batch: int, length: int, *, kv_cache: bool = False,
                  chunk_tokens: int = 8192) -> int:
  """A generous estimate of the device bytes of one inference forward of [batch, length].

  Parameters + a few live [B,T,D] and [B,T,F] activations + a chunk of float32 logits
  (+ the KV cache when decoding) + the [B,N,T,T] float32 logits, probabilities and mask
  of one layer when attention is dense.
  """
  cfg = model.config
  from flax import nnx
  params = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  act = jnp.dtype(cfg.dtype).itemsize
  bt = batch * length
  total = params + bt * (8 * cfg.d_model + 3 * cfg.d_ff) * act
  total += min(chunk_tokens, bt) * cfg.padded_vocab_size * 4 * 3
  kv_heads = cfg.num_kv_heads or cfg.num_heads
  if kv_cache:
    total += 2 * cfg.num_layers * bt * kv_heads * (cfg.d_model // cfg.num_heads) * act
  if uses_dense_attention(cfg):
    total += batch * cfg.num_heads * length * length * (4 * 3 + 1)
  return int(total)


def check_fits(model, batch: int, length: int, limit: int, *, kv_cache=False, what="") -> int:
  need = forward_bytes(model, batch, length, kv_cache=kv_cache)
  if need > limit:
    dense = uses_dense_attention(model.config)
    raise ValueError(
        f"{what}context length {length} x batch {batch} needs about {need / 2**30:.2f} GiB, more "
        f"than the {limit / 2**30:.2f} GiB usable here"
        + (" (attention is dense XLA, T x T: use implementation 'pallas' or 'cudnn' on a GPU)"
           if dense else "")
        + "; lower the context length or batch size, or raise --memory_limit_gb.")
  return need


# --- Data ---------------------------------------------------------------------------------------

def eval_corpus(config, source=None, split="validation"):
  """(TokenCorpus, tokenizer) of the run's data (or `source`), checked against the model."""
  from ssmax_jax import data
  tokenizer = data.get_tokenizer(config.data.tokenizer)
  if tokenizer.vocab_size > config.model.vocab_size:
    raise ValueError(f"tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} ids but the model "
                     f"has vocab_size {config.model.vocab_size}: the run's config does not match "
                     "its data; evaluate with the tokenizer it was trained with.")
  corpus = data.load_corpus(source or config.data.source, tokenizer, split)
  return corpus, tokenizer


def theta_list(model, scales) -> list[tuple[float, float]]:
  """[(scale, theta)] for RoPE theta multiples of the model's own."""
  out = []
  for s in scales:
    if float(s) <= 0:
      raise ValueError(f"RoPE theta scale {s} must be > 0 (1 = the model's own theta).")
    out.append((float(s), float(s) * float(model.config.rope_theta)))
  return out


def context_lengths(l_train: int, multiples=(), lengths=()) -> list[int]:
  """Absolute `lengths` if given, else `multiples` of the training length."""
  if lengths:
    out = [int(x) for x in lengths]
  else:
    out = [int(round(float(m) * l_train)) for m in multiples]
  if not out or min(out) < 2:
    raise ValueError(f"context lengths {out} must be given and each >= 2.")
  return out


# --- Output -------------------------------------------------------------------------------------

def write_json(path: str, kind: str, settings: dict, models: list[dict], results) -> dict:
  if kind not in KINDS:
    raise ValueError(f"kind {kind!r} is not one of {KINDS}.")
  doc = dict(format=FORMAT, kind=kind,
             created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             platform=jax.default_backend(), settings=settings, models=models, results=results)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(doc, f, indent=1, default=_jsonable)
  return doc


def _jsonable(x):
  if isinstance(x, (np.generic, jax.Array)):
    return np.asarray(x).tolist()
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(f"{type(x)} is not JSON serialisable")


def read_json(path: str) -> dict | None:
  """The evaluation document at `path`, or None if it is not one."""
  try:
    with open(path) as f:
      doc = json.load(f)
  except (OSError, ValueError):
    return None
  return doc if isinstance(doc, dict) and doc.get("format") == FORMAT else None


def pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def progress(iterable=None, *, total=None, desc="", enabled=True):
  from tqdm.auto import tqdm
  return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False)
