"""The one-command reproduction of the paper's variants (issue 6), as a library function.

`run(config, variant, out_dir)` does, in one process: (1) prepares the corpus once (cached in a
data directory), (2) trains the variant (the softmax variant also continues its model with SSMax:
variant (e)), (3) runs the whole evaluation suite on every model of the call (loss by position,
needle grid, attention to the needle, learned s), (4) writes into out_dir at most 8 small files:

  summary.json                      FORMAT: variant, preset, command, device, versions, corpus,
                                    wall time per phase, the training config, and per model its
                                    training numbers and evaluation metrics (results.model_metrics)
  loss_by_position.json / .png      the eval JSON without the per-position arrays (windowed means
                                    kept) and its figure
  needle.json / needle.png          all models' heatmaps in one figure
  attention.json / attention.png
  learned_s.json

`config` is a training config (ssmax_jax.train.default_config schema) with an extra `recipe`
group (configs/reproduce.py documents its keys). experiments/reproduce.py is the command line;
experiments/reproduce_report.py gathers the summaries (ssmax_jax.evals.results).
"""
import copy
import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import sysconfig
import time

import numpy as np

from ssmax_jax.evals import common, needle, provenance, results, runner

FORMAT = "ssmax_jax.reproduce.v1"
NEEDLE_SUFFIX = "_needle"  # label and workdir suffix of a model's needle fine-tuning phase
SUMMARY_FILE = "summary.json"
OUTPUT_FILES = ("summary.json", "loss_by_position.json", "loss_by_position.png", "needle.json",
                "needle.png", "attention.json", "attention.png", "learned_s.json")
# Variants a call trains; the others are produced by the softmax call.
RUNNABLE = ("softmax", "ssmax", "ssmax_fixed", "ssmax_bias", "ssmax_final10")
PRODUCED_BY = {"softmax_then_ssmax": "softmax", "qwen_logn": "softmax",
               "llama4_temperature": "softmax"}
VERSION_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy",
                    "ml-collections", "tiktoken", "ssmax-jax")


def check_variant(variant: str) -> str:
  if variant in RUNNABLE:
    return variant
  if variant in PRODUCED_BY:
    raise ValueError(f"--variant={variant!r} is produced by the call of "
                     f"--variant={PRODUCED_BY[variant]!r} (same run, same corpus); run that one.")
  raise ValueError(f"--variant={variant!r} is unknown; choose one of {', '.join(RUNNABLE)} "
                   f"({', '.join(PRODUCED_BY)} come with softmax).")


# --- The plan: training phases and models to evaluate -------------------------------------------

@dataclasses.dataclass
class Phase:
  """One training run: its label (the variant it produces), config and workdir."""
  label: str
  config: object
  workdir: str
  init_from: str | None = None  # label of the phase whose checkpoint it starts from


def split_config(config):
  """(training config without `recipe`, recipe) from a reproduce config."""
  if "recipe" not in config:
    raise ValueError("the config has no `recipe` group: pass --preset=NAME (configs/reproduce.py).")
  train_config = copy.deepcopy(config)
  train_config.unlock()
  recipe = train_config.recipe
  del train_config["recipe"]
  return train_config, recipe


def steps_for(tokens: float, batch_size: int, seq_len: int) -> int:
  return max(1, math.ceil(float(tokens) / (batch_size * seq_len)))


def needle_finetune_phase(parent: Phase, ft) -> Phase:
  """The paper's needle fine-tuning (Table 3) of a trained phase's model: a fresh AdamW
  (0.9, 0.999) without weight decay, clip 1.0, cosine from ft.lr to 0, loss on answers only."""
  c = copy.deepcopy(parent.config)
  if c.switch.step >= 0:  # (f): the model ends with the switched-to variant
    c.model.attention = c.switch.attention
    c.switch.step = -1
  c.init.workdir = parent.workdir
  c.data.update(kind="needle", needle_min_context=ft.min_context)
  c.train.update(num_steps=ft.steps, batch_size=ft.batch_size, seq_len=ft.seq_len or
                 c.train.seq_len, grad_accum_steps=1, max_minutes=0.0, profile_at_step=-1)
  c.optimizer.update(lr=ft.lr, b1=0.9, b2=0.999, weight_decay=0.0, clip_norm=1.0,
                     schedule="cosine", warmup_steps=0, final_lr_ratio=0.0)
  return Phase(f"{parent.label}{NEEDLE_SUFFIX}", c, f"{parent.workdir}{NEEDLE_SUFFIX}",
               init_from=parent.label)


def plan(config, variant: str, workdir: str, data_source: str):
  """(phases, models, retrieval_models): the training phases of `variant` and the models
  evaluated, as [(label, spec)] with spec `LABEL=WORKDIR[:VARIANT]` (docs/evaluations.md):
  `models` (pretrained) for the loss by position and learned s, `retrieval_models` (the same
  labels after needle fine-tuning, or the pretrained ones without it) for the needle grid and
  the attention to the needle. Pure."""
  check_variant(variant)
  base, recipe = split_config(config)
  base.data.source = data_source
  t = base.train
  num_steps = steps_for(recipe.tokens, t.batch_size, t.seq_len)
  base.train.num_steps = num_steps
  main = copy.deepcopy(base)
  main.model.attention = "ssmax" if variant == "ssmax_final10" else variant
  main.train.max_minutes = float(recipe.train_minutes)
  phases = [Phase(variant, main, os.path.join(workdir, variant))]
  if variant == "ssmax_final10":
    if not 0.0 < recipe.switch_fraction < 1.0:
      raise ValueError(f"config.recipe.switch_fraction={recipe.switch_fraction} must be in (0, 1).")
    main.model.attention = "softmax"
    main.switch.update(step=min(num_steps - 1, max(1, round(num_steps * (1 - recipe.switch_fraction)))),
                       attention="ssmax")
    if num_steps < 2:
      raise ValueError(f"ssmax_final10 needs at least 2 steps; config.recipe.tokens="
                       f"{recipe.tokens:g} gives {num_steps}: raise it.")
  # (label, the phase whose model it is, inference variant or "")
  rows = [(variant, variant, "")]
  if variant == "softmax":
    if recipe.continue_fraction <= 0:
      raise ValueError(f"config.recipe.continue_fraction={recipe.continue_fraction} must be > 0 "
                       "(variant (e) continues the softmax model with SSMax).")
    cont = copy.deepcopy(base)
    steps = steps_for(recipe.continue_fraction * recipe.tokens, t.batch_size, t.seq_len)
    cont.model.attention = "ssmax"
    cont.init.workdir = phases[0].workdir
    cont.train.num_steps = steps
    cont.optimizer.warmup_steps = max(1, steps // 10)
    cont.data.seed = base.data.seed + 1
    phases.append(Phase("softmax_then_ssmax", cont, os.path.join(workdir, "softmax_then_ssmax"),
                        init_from="softmax"))
    rows += [("softmax_then_ssmax", "softmax_then_ssmax", ""),
             ("qwen_logn", "softmax", ":qwen_logn"),
             ("llama4_temperature", "softmax", ":llama4_temperature")]
  ft = recipe.needle_finetune
  if ft.steps < 0:
    raise ValueError(f"config.recipe.needle_finetune.steps={ft.steps} must be >= 0 (0: none).")
  pretrained = {ph.label: ph.workdir for ph in phases}
  tuned = [needle_finetune_phase(ph, ft) for ph in phases] if ft.steps else []
  retrieval_dirs = {ph.init_from: ph.workdir for ph in tuned} or pretrained
  models = [(label, f"{label}={pretrained[src]}{inference}") for label, src, inference in rows]
  retrieval = [(label, f"{label}={retrieval_dirs[src]}{inference}")
               for label, src, inference in rows]
  return phases + tuned, models, retrieval


# --- Corpus ---------------------------------------------------------------------------------------

def corpus_glob(corpus: str) -> str | None:
  """The file glob of recipe.corpus (None for 'shakespeare' and prepared directories)."""
  if corpus == "shakespeare" or os.path.isdir(corpus):
    return None
  if corpus == "site_packages":
    return os.path.join(sysconfig.get_paths()["purelib"], "**", "*.py")
  if "*" in corpus:
    return corpus
  raise ValueError(f"config.recipe.corpus={corpus!r}: use 'shakespeare', 'site_packages', a "
                   "recursive glob of text files (e.g. 'DOCS/**/*.txt') or a directory written "
                   "by experiments.prep_data.")


def prepare_corpus(recipe, tokenizer: str, data_dir: str) -> tuple[str, dict]:
  """(data.source, corpus info); prepares text files once into data_dir (reused when the files,
  tokenizer and split are unchanged). 'shakespeare' and prepared directories are used as they
  are."""
  from ssmax_jax import data
  pattern = corpus_glob(recipe.corpus)
  if pattern is None:
    info = dict(name=recipe.corpus, tokenizer=tokenizer, reused=True, directory=None)
    index_path = os.path.join(recipe.corpus, data.sources.INDEX_FILE)
    if os.path.isfile(index_path):  # a prep_data directory: counts from its index (no scan)
      with open(index_path) as f:
        index = json.load(f)
      if index.get("tokenizer") != tokenizer:
        raise ValueError(f"config.recipe.corpus={recipe.corpus!r} was prepared with tokenizer "
                         f"{index.get('tokenizer')!r}, the config trains with {tokenizer!r}.")
      counts = {s: (e["num_tokens"], e["num_docs"]) for s, e in index["splits"].items()}
      if "validation" not in counts:
        raise ValueError(f"config.recipe.corpus={recipe.corpus!r} has no validation split: "
                         "prepare it with --val_fraction > 0.")
    else:
      counts = {s: (c.num_tokens, c.num_docs) for s in ("train", "validation")
                for c in [data.load_corpus(recipe.corpus, data.get_tokenizer(tokenizer), s)]}
    if recipe.corpus != "shakespeare":
      info["directory"] = os.path.abspath(recipe.corpus)
    for s, (n, d) in counts.items():
      info[f"{s}_tokens"], info[f"{s}_docs"] = n, d
    return recipe.corpus, info
  if not 0.0 < recipe.val_fraction < 1.0:
    raise ValueError(f"config.recipe.val_fraction={recipe.val_fraction} must be in (0, 1): the "
                     "evaluations read a held-out split.")
  key = recipe.corpus if recipe.corpus == "site_packages" else (
      "glob_" + hashlib.sha1(pattern.encode()).hexdigest()[:10])
  out = os.path.join(data_dir, f"{key}_{tokenizer}")
  workers = recipe.prep_workers or os.cpu_count() or 1
  t0 = time.perf_counter()
  index, reused = data.prepare_text_files_cached(pattern, tokenizer, out,
                                                 val_fraction=recipe.val_fraction,
                                                 num_workers=workers, seed=0)
  seconds = time.perf_counter() - t0
  splits = index["splits"]
  info = dict(name=recipe.corpus, glob=pattern, tokenizer=tokenizer, directory=os.path.abspath(out),
              reused=reused, num_files=index["num_files"], num_bytes=index["num_bytes"],
              fingerprint=index["fingerprint"], val_fraction=index["val_fraction"],
              prep_workers=workers, prep_s=round(seconds, 2))
  for s, e in splits.items():
    info[f"{s}_tokens"], info[f"{s}_docs"] = e["num_tokens"], e["num_docs"]
  if not reused:
    info["prep_mb_per_s"] = round(index["num_bytes"] / 1e6 / max(seconds, 1e-9), 2)
  return out, info


# --- Checks before compute ------------------------------------------------------------------------

def _checkpoint_steps(workdir: str) -> list[int]:
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


# Keys that make a checkpoint another run (a finished or resumed run must agree on them).
_SAME_RUN = ("model.vocab_size", "model.d_model", "model.num_layers", "model.num_heads",
             "model.num_kv_heads", "model.d_ff", "model.vocab_pad_multiple", "model.attention",
             "model.rope_theta", "model.s_init", "model.fixed_s", "data.tokenizer",
             "train.batch_size", "train.seq_len", "train.num_steps", "switch.step",
             "switch.attention")


def _check_same_run(ph: Phase):
  from ssmax_jax.train import read_config
  saved = read_config(ph.workdir)
  for name in _SAME_RUN:
    group, k = name.split(".")
    if saved[group][k] != ph.config[group][k]:
      raise ValueError(f"workdir {ph.workdir} holds a run with config.{name}="
                       f"{saved[group][k]!r}, this plan has {ph.config[group][k]!r}: pass a new "
                       "--workdir (or the same overrides as that run).")


def check_plan(phases, recipe, corpus: dict):
  """Everything that can be refused before training: configs, resumable workdirs, evaluation
  lengths against the tokenizer and the validation data."""
  from ssmax_jax import data
  from ssmax_jax.train import validate
  for ph in phases:
    try:
      validate(ph.config)
    except ValueError as e:
      raise ValueError(f"{ph.label}: {e}") from None
    steps = _checkpoint_steps(ph.workdir)
    if steps and steps[-1] > ph.config.train.num_steps:
      raise ValueError(f"workdir {ph.workdir} holds a checkpoint at step {steps[-1]}, beyond this "
                       f"plan's {ph.config.train.num_steps} steps: pass a new --workdir.")
    if steps:
      _check_same_run(ph)
  c, e = phases[0].config, recipe.eval
  l_train = c.model.l_train or c.train.seq_len
  tokenizer = data.get_tokenizer(c.data.tokenizer)
  shortest = needle.min_context_length(tokenizer)
  lengths = common.context_lengths(l_train, e.needle_multiples)
  if min(lengths) < shortest:
    raise ValueError(f"config.recipe.eval.needle_multiples {tuple(e.needle_multiples)} x l_train "
                     f"{l_train} give {min(lengths)} tokens, shorter than a needle prompt with "
                     f"tokenizer {tokenizer.name!r} ({shortest}): use larger multiples.")
  if e.attention_multiple * l_train < shortest:
    raise ValueError(f"config.recipe.eval.attention_multiple={e.attention_multiple} x l_train is "
                     f"shorter than a needle prompt ({shortest} tokens).")
  longest = max(common.context_lengths(l_train, e.multiples) + lengths
                + [int(round(e.attention_multiple * l_train))]) + 16
  if corpus["validation_tokens"] < longest:
    raise ValueError(f"the validation split has {corpus['validation_tokens']} tokens, fewer than "
                     f"the longest evaluation context ({longest}): raise config.recipe.val_fraction "
                     "or lower the multiples.")


# --- Training -------------------------------------------------------------------------------------

def train_phase(ph: Phase) -> dict:
  from ssmax_jax.train import read_metrics, train
  from ssmax_jax.train.config import model_config
  from ssmax_jax.models.transformer import count_params
  from ssmax_jax.train.checkpoint import abstract_model
  before = _checkpoint_steps(ph.workdir)
  t0 = time.perf_counter()
  if before and before[-1] == ph.config.train.num_steps:  # finished (here, or on a cluster)
    out = {"step": before[-1], "loss": float("nan")}
  else:
    out = train(ph.config, ph.workdir)
  wall = time.perf_counter() - t0
  t = ph.config.train
  try:
    records = [r for r in read_metrics(ph.workdir) if r["step"] <= out["step"]]
  except OSError:  # a run trained elsewhere whose metrics.jsonl was not kept
    records = []
  tail = [r for r in records if r["step"] > 0.9 * out["step"]] or records[-1:]
  rates = [r["tokens_per_s"] for r in records if r.get("tokens_per_s")]
  mfus = [r["mfu"] for r in records if r.get("mfu") is not None]
  cfg = model_config(ph.config)
  if ph.config.switch.step >= 0:  # params after the switch (s, b added)
    cfg = dataclasses.replace(cfg, attention=ph.config.switch.attention)
  return dict(
      workdir=os.path.abspath(ph.workdir), attention=cfg.attention, init_from=ph.init_from,
      steps=out["step"], planned_steps=t.num_steps, stopped_early=bool(out.get("stopped")),
      resumed_from_step=before[-1] if before else None,
      tokens=out["step"] * t.batch_size * t.seq_len, batch_size=t.batch_size, seq_len=t.seq_len,
      params=int(count_params(abstract_model(cfg))),
      switch_step=ph.config.switch.step if ph.config.switch.step >= 0 else None,
      final_train_loss=float(np.mean([r["loss_mean"] for r in tail])) if tail else None,
      last_logged_loss=out["loss"] if np.isfinite(out["loss"]) else None, tokens_per_s=float(np.median(rates)) if rates else None,
      mfu=float(np.median(mfus)) if mfus else None, wall_s=round(wall, 2))


# --- Outputs --------------------------------------------------------------------------------------

def _plot_needle(doc: dict, path: str):
  """All models' needle grids (depth x context length) side by side in one figure."""
  plt = common.pyplot()
  grids = [(e["label"], g) for e in doc["results"] for g in e["grids"]]
  rows = int(math.ceil(len(grids) / 4))
  cols = min(4, len(grids))
  g0 = grids[0][1]
  w = 1.0 + 0.8 * len(g0["context_lengths"])
  h = 1.2 + 0.35 * len(g0["depths"])
  fig, axes = plt.subplots(rows, cols, figsize=(w * cols + 1.0, h * rows), squeeze=False,
                           layout="constrained")
  im = None
  for ax, (label, g) in zip(axes.flat, grids):
    acc = np.asarray(g["accuracy"]).T
    im = ax.imshow(acc, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(acc.shape[1]), [str(x) for x in g["context_lengths"]], fontsize=7)
    ax.set_yticks(range(acc.shape[0]), [f"{100 * d:.0f}%" for d in g["depths"]], fontsize=7)
    for (r, c), v in np.ndenumerate(acc):
      ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6)
    ax.set_title(f"{label}, θ {g['rope_theta']:g}", fontsize=9)
    ax.set_xlabel("context length", fontsize=8)
  for ax in list(axes.flat)[len(grids):]:
    ax.axis("off")
  axes[0][0].set_ylabel("needle depth", fontsize=8)
  fig.colorbar(im, ax=axes.ravel().tolist(), label="exact match")
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _plot_loss(doc: dict, metrics: dict, path: str):
  """The loss-by-position figure, with the means at shorter lengths taken from prefixes (when
  loss_from_prefix evaluated only the longest) as points of the mean-loss panel."""
  from ssmax_jax.evals import loss_by_position
  entries = copy.deepcopy(doc["results"])
  for entry in entries:
    have = {(results.key(c["theta_scale"]), results.key(c["multiple"])) for c in entry["curves"]}
    for theta, by_m in metrics[entry["label"]].get("loss", {}).items():
      for m, value in by_m.items():
        if (theta, m) not in have:
          entry["curves"].append(dict(theta_scale=float(theta), multiple=float(m),
                                      context_length=int(round(float(m) * entry["l_train"])),
                                      mean_loss=value))
  loss_by_position.plot(entries, path)


def _write_outputs(eval_dir: str, out_dir: str, docs: dict, metrics: dict):
  """Copies the evaluation results into out_dir: compact JSON, one needle figure."""
  os.makedirs(out_dir, exist_ok=True)
  _plot_loss(docs["loss_by_position"], metrics, os.path.join(out_dir, "loss_by_position.png"))
  lbp = copy.deepcopy(docs["loss_by_position"])
  for entry in lbp["results"]:
    for curve in entry["curves"]:
      curve.pop("loss_per_position", None)
  lbp["settings"]["loss_per_position"] = "dropped here (windowed_loss kept)"
  docs = {**docs, "loss_by_position": lbp}
  for kind in ("loss_by_position", "needle", "attention", "learned_s"):
    with open(os.path.join(out_dir, f"{kind}.json"), "w") as f:
      json.dump(docs[kind], f, default=common._jsonable)  # pylint: disable=protected-access
  shutil.copyfile(os.path.join(eval_dir, "attention.png"), os.path.join(out_dir, "attention.png"))
  _plot_needle(docs["needle"], os.path.join(out_dir, "needle.png"))


def versions() -> dict:
  out = {"python": platform.python_version()}
  for name in VERSION_PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  out["source_sha256"] = provenance.source_digest()  # the code that ran, with or without git
  out["git_commit"], out["git_dirty"] = provenance.git_state()
  return out


def device_info() -> dict:
  import jax
  devices = jax.devices()
  info = dict(platform=jax.default_backend(), kind=devices[0].device_kind, count=len(devices))
  try:
    info["platform_version"] = devices[0].client.platform_version
  except AttributeError:
    pass
  return info


# --- The recipe -----------------------------------------------------------------------------------

def run(config, variant: str, out_dir: str, *, workdir: str, data_dir: str, command: str = "",
        show_progress: bool = False, train_only: bool = False) -> dict:
  """Prepares the corpus, trains `variant`, evaluates every model of the call and writes
  OUTPUT_FILES into out_dir. Returns the summary. Raises ValueError before any training on a bad
  variant, config, workdir or evaluation setting.

  A phase whose workdir already holds its last step is not trained again (only evaluated), so a
  run trained elsewhere (train_only=True on every host of a cluster, config.distributed=True)
  is evaluated by the same command on one host. train_only returns {'variant', 'trained'}.
  """
  t_start = time.perf_counter()
  check_variant(variant)
  if os.path.isfile(out_dir):
    raise ValueError(f"--out={out_dir!r} is a file: pass a directory.")
  if config.distributed and not train_only:
    raise ValueError("config.distributed=True trains on several hosts: pass --train_only there, "
                     "then evaluate with the same command on one host without "
                     "--config.distributed=True.")
  _, recipe = split_config(config)
  wall = {}
  t0 = time.perf_counter()
  source, corpus = prepare_corpus(recipe, config.data.tokenizer, data_dir)
  wall["prep"] = round(time.perf_counter() - t0, 2)
  phases, models, retrieval = plan(config, variant, workdir, source)
  check_plan(phases, recipe, corpus)
  print(f"reproduce {variant} ({recipe.preset}): corpus {corpus['name']} "
        f"({corpus['train_tokens']:,} train / {corpus['validation_tokens']:,} validation tokens, "
        f"{'cached' if corpus['reused'] else 'prepared in %.1f s' % wall['prep']}); "
        + "; ".join(f"{p.label}: {p.config.train.num_steps} steps of {p.config.train.batch_size} x "
                    f"{p.config.train.seq_len} tokens" for p in phases), flush=True)

  if config.distributed:
    import jax
    if not jax.distributed.is_initialized():
      jax.distributed.initialize()
    for ph in phases:  # initialised once here, not again by each phase's train()
      ph.config.distributed = False
  trained = {}
  for ph in phases:
    trained[ph.label] = train_phase(ph)
    wall[f"train_{ph.label}"] = trained[ph.label]["wall_s"]
    r = trained[ph.label]
    print(f"{ph.label}: {r['steps']} steps, {r['tokens']:,} tokens, final train loss "
          f"{r['final_train_loss'] or float('nan'):.4f}, {r['tokens_per_s'] or 0:,.0f} tokens/s, "
          f"{r['wall_s']:.0f} s", flush=True)
  if train_only:
    return dict(variant=variant, trained=trained)

  e = recipe.eval
  specs = [spec for _, spec in models]
  retrieval_specs = [spec for _, spec in retrieval]
  eval_dir = os.path.join(workdir, "eval")
  kw = dict(show_progress=show_progress)
  docs = {}
  t0 = time.perf_counter()
  # loss_from_prefix: one context length (the longest) per model and theta, the shorter ones from
  # its prefixes (results.model_metrics): fewer compilations and forwards.
  lbp_multiples = (max(e.multiples),) if e.loss_from_prefix else tuple(e.multiples)
  docs["loss_by_position"] = runner.run_loss_by_position(
      specs, eval_dir, multiples=lbp_multiples, theta_scales=tuple(e.theta_scales),
      num_sequences=e.num_sequences, batch_size=e.batch_size, **kw)
  wall["eval_loss_by_position"] = round(time.perf_counter() - t0, 2)
  t0 = time.perf_counter()
  docs["needle"] = runner.run_needle(
      retrieval_specs, eval_dir, multiples=tuple(e.needle_multiples), depths=tuple(e.needle_depths),
      trials=e.needle_trials, theta_scales=tuple(e.needle_theta_scales),
      batch_size=e.needle_batch_size, method=e.needle_method, **kw)
  wall["eval_needle"] = round(time.perf_counter() - t0, 2)
  t0 = time.perf_counter()
  docs["attention"] = runner.run_attention(
      retrieval_specs, eval_dir, multiple=e.attention_multiple, trials=e.attention_trials,
      batch_size=e.attention_batch_size, **kw)
  wall["eval_attention"] = round(time.perf_counter() - t0, 2)
  t0 = time.perf_counter()
  docs["learned_s"] = runner.run_learned_s(specs, eval_dir)
  wall["eval_learned_s"] = round(time.perf_counter() - t0, 2)

  metrics = results.model_metrics(docs, prefix_multiples=tuple(e.multiples))
  base = trained[phases[0].label]
  entries = {}
  for label, spec in models:
    if label in trained:
      entry = dict(kind="trained" if trained[label]["init_from"] is None else "continued",
                   **trained[label])
      if entry["kind"] == "continued":
        entry["continued_tokens"] = entry["tokens"]
        entry["tokens"] = base["tokens"] + entry["tokens"]
    else:
      entry = dict(kind="inference", attention=label, init_from=phases[0].label,
                   **{k: base[k] for k in ("workdir", "steps", "tokens", "batch_size", "seq_len",
                                           "params")})
    entry.update(spec=spec, metrics=metrics[label])
    source = entry["init_from"] if entry["kind"] == "inference" else label
    tuned = trained.get(source + NEEDLE_SUFFIX)
    if tuned is not None:  # the needle grid and attention analysis read this model
      entry["needle_finetune"] = {k: tuned[k] for k in (
          "workdir", "steps", "tokens", "batch_size", "seq_len", "final_train_loss", "wall_s")}
    entries[label] = entry
  summary = dict(
      format=FORMAT, variant=variant, preset=recipe.preset, command=command,
      created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      device=device_info(), versions=versions(), corpus=corpus,
      config=json.loads(json.dumps(phases[0].config.to_dict(), default=str)),
      recipe=json.loads(json.dumps(recipe.to_dict(), default=str)),
      models=entries, files=list(OUTPUT_FILES), wall_s=wall)
  if variant == "softmax":
    summary["continue_config"] = json.loads(json.dumps(phases[1].config.to_dict(), default=str))
  tuned = [ph for ph in phases if ph.label.endswith(NEEDLE_SUFFIX)]
  if tuned:
    summary["needle_finetune_config"] = json.loads(json.dumps(tuned[0].config.to_dict(),
                                                              default=str))
  _write_outputs(eval_dir, out_dir, docs, metrics)
  wall["total"] = round(time.perf_counter() - t_start, 2)
  with open(os.path.join(out_dir, SUMMARY_FILE), "w") as f:
    json.dump(summary, f, indent=1, default=common._jsonable)  # pylint: disable=protected-access
  return summary
