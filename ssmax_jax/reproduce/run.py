"""One call of the reproduction: `run(config, variant, out_dir)` prepares the corpus, trains the
variant's phases, evaluates every model of the call and writes OUTPUT_FILES into out_dir:

  summary.json                      FORMAT: variant, preset, command, device, versions, corpus,
                                    wall time per phase, the training config, and per model its
                                    training numbers and evaluation metrics (metrics.model_metrics)
  loss_by_position.json / .png      the eval JSON without the per-position arrays (windowed means
                                    kept) and its figure
  needle.json / needle.png          all models' heatmaps in one figure
  attention.json / attention.png
  learned_s.json

`config` is a training config (ssmax_jax.train.default_config schema) with an extra `recipe`
group (configs/reproduce.py documents its keys). experiments/reproduce.py is the command line.
"""
import dataclasses
import os
import time

import numpy as np

from ssmax_jax.evals import runner
from ssmax_jax.reproduce import outputs, summary as summary_lib
from ssmax_jax.reproduce.corpus import prepare_corpus
from ssmax_jax.reproduce.metrics import model_metrics
from ssmax_jax.reproduce.plan import Phase, check_plan, checkpoint_steps, plan, split_config
from ssmax_jax.reproduce.variants import check_runnable


def train_phase(ph: Phase) -> dict:
  """Trains one phase (or reads a finished one) and returns its training numbers."""
  from ssmax_jax.train import read_metrics, train
  from ssmax_jax.train.config import model_config
  from ssmax_jax.models.transformer import count_params
  from ssmax_jax.train.checkpoint import abstract_model
  before = checkpoint_steps(ph.workdir)
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
      last_logged_loss=out["loss"] if np.isfinite(out["loss"]) else None,
      tokens_per_s=float(np.median(rates)) if rates else None,
      mfu=float(np.median(mfus)) if mfus else None, wall_s=round(wall, 2))


def evaluate(e, models, retrieval, eval_dir: str, wall: dict, show_progress=False) -> dict:
  """{kind: evaluation document} of the four evaluations (recipe.eval `e`); the wall time of
  each goes into `wall`. models read the pretrained checkpoints, retrieval the fine-tuned ones."""
  specs = [spec for _, spec in models]
  retrieval_specs = [spec for _, spec in retrieval]
  kw = dict(show_progress=show_progress)
  docs = {}
  t0 = time.perf_counter()
  # loss_from_prefix: one context length (the longest) per model and theta, the shorter ones from
  # its prefixes (metrics.model_metrics): fewer compilations and forwards.
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
  return docs


def _print_plan(variant, recipe, corpus, wall, phases):
  print(f"reproduce {variant} ({recipe.preset}): corpus {corpus['name']} "
        f"({corpus['train_tokens']:,} train / {corpus['validation_tokens']:,} validation tokens, "
        f"{'cached' if corpus['reused'] else 'prepared in %.1f s' % wall['prep']}); "
        + "; ".join(f"{p.label}: {p.config.train.num_steps} steps of {p.config.train.batch_size} x "
                    f"{p.config.train.seq_len} tokens" for p in phases), flush=True)


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
  check_runnable(variant)
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
  _print_plan(variant, recipe, corpus, wall, phases)

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

  eval_dir = os.path.join(workdir, "eval")
  docs = evaluate(recipe.eval, models, retrieval, eval_dir, wall, show_progress)
  metrics = model_metrics(docs, prefix_multiples=tuple(recipe.eval.multiples))
  entries = summary_lib.model_entries(models, phases, trained, metrics)
  summary = summary_lib.make_summary(variant, recipe, command, corpus, phases, entries, wall)
  outputs.write_outputs(eval_dir, out_dir, docs, metrics)
  wall["total"] = round(time.perf_counter() - t_start, 2)
  summary_lib.write_summary(summary, out_dir)
  return summary
