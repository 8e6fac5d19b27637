"""The evaluation commands as functions: load the models, check everything, evaluate, write
JSON + PNG + markdown into `out_dir`. experiments/eval_*.py parse flags and call these."""
import os

import numpy as np

from ssmax_jax.evals import attention, common, learned_s, loss_by_position, needle


def _prepare(specs, out_dir, implementation):
  specs = common.parse_specs(specs)
  if not out_dir:
    if len(specs) > 1:
      raise ValueError("several models are compared in one output: pass --out=DIR.")
    out_dir = os.path.join(specs[0].workdir, "eval")
  loaded = []
  for spec in specs:
    model, config = common.load(spec, implementation)
    loaded.append((spec, model, config, common.model_info(spec, model, config)))
  os.makedirs(out_dir, exist_ok=True)
  return loaded, out_dir


def _write_md(out_dir, name, title, body):
  path = os.path.join(out_dir, name)
  with open(path, "w") as f:
    f.write(f"# {title}\n\n{body}")
  return path


def run_loss_by_position(specs, out_dir="", *, multiples=(1, 2, 5, 10, 20), lengths=(),
                         theta_scales=(1, 50), num_sequences=16, batch_size=1, window=0,
                         chunk_tokens=8192, documents_only=False, data_source="",
                         implementation="default", memory_limit_gb=None,
                         show_progress=True) -> dict:
  """Test loss per position for each model, context length and RoPE theta scale (Fig. 5).

  Writes loss_by_position.{json,png,md} into out_dir.

  Args:
    specs: model specs, each `[LABEL=]WORKDIR[@STEP][:VARIANT]` (`common.ModelSpec`): a
      training workdir, a checkpoint step (default the latest) and a variant to evaluate as.
    out_dir: where the results go; '' is WORKDIR/eval of the only model.
    multiples: context lengths as multiples of each model's l_train.
    lengths: context lengths in tokens (added to those of multiples).
    theta_scales: RoPE theta multipliers to evaluate at (the paper raises theta 50x).
    num_sequences: windows averaged per length.
    batch_size: windows per forward pass.
    window: positions averaged per plotted point; 0 is l_train // 8.
    chunk_tokens: the most logits positions computed at once.
    documents_only: windows start at documents long enough (else evenly spaced windows of
      the stream, across documents).
    data_source: evaluation data other than each run's own (a prep_data directory or a
      token file); '' is the run's validation split.
    implementation: the attention backend ('default': XLA on CPU, a flash kernel elsewhere).
    memory_limit_gb: refuse lengths whose activations need more (None: 90% of the device's
      memory).
    show_progress: progress bars.

  Returns:
    The JSON document written (`common.write_json`: format, kind, settings, models, results).

  Raises:
    ValueError: on a bad spec, a length that does not fit, or too little data, before any
      evaluation.
  """
  loaded, out_dir = _prepare(specs, out_dir, implementation)
  limit = common.memory_limit_bytes(memory_limit_gb)
  plans = []
  for spec, model, config, info in loaded:  # every check before any evaluation
    ls = common.context_lengths(info["l_train"], multiples, lengths)
    thetas = common.theta_list(model, theta_scales)
    corpus, _ = common.eval_corpus(config, data_source or None)
    docs = corpus.doc_starts if documents_only else None
    for length in ls:
      loss_by_position.window_starts(corpus.num_tokens, length, num_sequences, docs)
    common.check_fits(model, batch_size, max(ls), limit, what=f"{spec.label}: ")
    plans.append((spec, model, info, ls, thetas, corpus.tokens, docs))
  results = []
  for spec, model, info, ls, thetas, tokens, docs in plans:
    w = window or max(1, info["l_train"] // 8)
    curves = []
    for scale, theta in thetas:
      for length in ls:
        curve = loss_by_position.loss_by_position(
            model, tokens, length, num_sequences=num_sequences, batch_size=batch_size,
            rope_theta=theta, window=w, chunk_tokens=chunk_tokens, doc_starts=docs,
            show_progress=show_progress,
            desc=f"{spec.label} T={length} θ×{scale:g}")
        curve.update(theta_scale=scale, multiple=length / info["l_train"])
        curves.append(curve)
    results.append(dict(label=spec.label, l_train=info["l_train"], curves=curves))
  figure = "loss_by_position.png"
  loss_by_position.plot(results, os.path.join(out_dir, figure))
  settings = dict(context_lengths=sorted({c["context_length"] for r in results
                                          for c in r["curves"]}),
                  theta_scales=[float(s) for s in theta_scales], num_sequences=num_sequences,
                  batch_size=batch_size, documents_only=documents_only,
                  data_source=data_source or "run's own", figure=figure)
  doc = common.write_json(os.path.join(out_dir, "loss_by_position.json"), "loss_by_position",
                          settings, [l[3] for l in loaded], results)
  _write_md(out_dir, "loss_by_position.md", "Test loss by position",
            loss_by_position.markdown(results) + f"\n![loss by position]({figure})\n")
  return doc


def run_needle(specs, out_dir="", *, multiples=(1, 2, 5, 10, 20), lengths=(),
               depths=tuple(np.round(np.linspace(0, 1, 11), 2)), trials=20, theta_scales=(50,),
               batch_size=8, method="generate", seed=0, data_source="",
               implementation="default", memory_limit_gb=None, show_progress=True) -> dict:
  """Needle exact-match grid per model and RoPE theta scale (section 3.3).

  Writes needle.json, needle_*.png and needle.md into out_dir.

  Args:
    specs: model specs, each `[LABEL=]WORKDIR[@STEP][:VARIANT]` (`common.ModelSpec`): a
      training workdir, a checkpoint step (default the latest) and a variant to evaluate as.
    out_dir: where the results go; '' is WORKDIR/eval of the only model.
    multiples: context lengths as multiples of each model's l_train.
    lengths: context lengths in tokens (added to those of multiples).
    depths: needle depths in [0, 1] (0: the start of the context).
    trials: needles per (length, depth) cell.
    theta_scales: RoPE theta multipliers to evaluate at.
    batch_size: prompts per decoding call.
    method: 'generate' (greedy decoding) or 'teacher_forcing' (`needle.needle_grid`).
    seed: draws the cities, numbers and haystacks.
    data_source: evaluation data other than each run's own (a prep_data directory or a
      token file); '' is the run's validation split.
    implementation: the attention backend ('default': XLA on CPU, a flash kernel elsewhere).
    memory_limit_gb: refuse lengths whose activations need more (None: 90% of the device's
      memory).
    show_progress: progress bars.

  Returns:
    The JSON document written (`common.write_json`: format, kind, settings, models, results).

  Raises:
    ValueError: on a bad spec, a length that does not fit, or too little data, before any
      evaluation.
  """
  loaded, out_dir = _prepare(specs, out_dir, implementation)
  limit = common.memory_limit_bytes(memory_limit_gb)
  plans = []
  for spec, model, config, info in loaded:
    ls = common.context_lengths(info["l_train"], multiples, lengths)
    thetas = common.theta_list(model, theta_scales)
    corpus, tokenizer = common.eval_corpus(config, data_source or None)
    tokens = corpus.tokens
    shortest = needle.min_context_length(tokenizer)
    if min(ls) < shortest:
      raise ValueError(f"{spec.label}: context length {min(ls)} is too short for a needle with "
                       f"tokenizer {tokenizer.name!r}; use lengths >= {shortest}.")
    if len(tokens) < max(ls) + 16:
      raise ValueError(f"{spec.label}: the evaluation data has {len(tokens)} tokens, fewer than "
                       f"context length {max(ls)}; use shorter contexts or --data_source.")
    common.check_fits(model, batch_size, max(ls) + 16, limit, kv_cache=True,
                      what=f"{spec.label}: ")
    plans.append((spec, model, ls, thetas, tokens, tokenizer))
  results = []
  for spec, model, ls, thetas, tokens, tokenizer in plans:
    grids = []
    for scale, theta in thetas:
      grid = needle.needle_grid(model, tokenizer, tokens, ls, list(depths), trials=trials,
                                rope_theta=theta, batch_size=batch_size, seed=seed, method=method,
                                show_progress=show_progress, desc=f"{spec.label} θ×{scale:g}")
      grid["theta_scale"] = scale
      grid["figure"] = f"needle_{needle.file_stem(spec.label)}_theta{scale:g}.png"
      needle.plot_heatmap(grid, os.path.join(out_dir, grid["figure"]),
                          f"{spec.label}, RoPE θ {theta:g}")
      grids.append(grid)
    results.append(dict(label=spec.label, grids=grids))
  settings = dict(depths=[float(d) for d in depths], trials=trials,
                  theta_scales=[float(s) for s in theta_scales], method=method, seed=seed,
                  batch_size=batch_size, data_source=data_source or "run's own")
  doc = common.write_json(os.path.join(out_dir, "needle.json"), "needle", settings,
                          [l[3] for l in loaded], results)
  _write_md(out_dir, "needle.md", "Needle in a haystack", needle.markdown(results))
  return doc


def run_attention(specs, out_dir="", *, multiple=8.0, length=0, trials=100, theta_scale=50.0,
                  batch_size=4, seed=0, top_k=10, data_source="", implementation="default",
                  memory_limit_gb=None, show_progress=True) -> dict:
  """Attention of the last prompt token to the needle number per layer and head (Fig. 7/8).

  Writes attention.{json,png,md} into out_dir.

  Args:
    specs: model specs, each `[LABEL=]WORKDIR[@STEP][:VARIANT]` (`common.ModelSpec`): a
      training workdir, a checkpoint step (default the latest) and a variant to evaluate as.
    out_dir: where the results go; '' is WORKDIR/eval of the only model.
    multiple: the context length as a multiple of l_train (when length is 0).
    length: the context length in tokens (the paper used 8,000); 0 uses multiple.
    trials: needle prompts averaged.
    theta_scale: the RoPE theta multiplier.
    batch_size: prompts per forward pass.
    seed: draws the cities, numbers, depths and haystacks.
    top_k: heads listed and plotted.
    data_source: evaluation data other than each run's own (a prep_data directory or a
      token file); '' is the run's validation split.
    implementation: the attention backend ('default': XLA on CPU, a flash kernel elsewhere).
    memory_limit_gb: refuse lengths whose activations need more (None: 90% of the device's
      memory).
    show_progress: progress bars.

  Returns:
    The JSON document written (`common.write_json`: format, kind, settings, models, results).

  Raises:
    ValueError: on a bad spec, a length that does not fit, or too little data, before any
      evaluation.
  """
  loaded, out_dir = _prepare(specs, out_dir, implementation)
  limit = common.memory_limit_bytes(memory_limit_gb)
  plans = []
  for spec, model, config, info in loaded:
    T = common.context_lengths(info["l_train"], (multiple,), (length,) if length else ())[0]
    (scale, theta), = common.theta_list(model, (theta_scale,))
    corpus, tokenizer = common.eval_corpus(config, data_source or None)
    tokens = corpus.tokens
    if T < needle.min_context_length(tokenizer) or len(tokens) < T + 16:
      raise ValueError(f"{spec.label}: context length {T} must be >= "
                       f"{needle.min_context_length(tokenizer)} and fit the evaluation data "
                       f"({len(tokens)} tokens).")
    cfg = model.config
    need = common.check_fits(model, batch_size, T, limit, what=f"{spec.label}: ")
    probs = batch_size * cfg.num_layers * cfg.num_heads * T * 4 * 3
    if need + probs > limit:
      raise ValueError(f"{spec.label}: the attention rows need {(need + probs) / 2**30:.2f} GiB, "
                       f"more than {limit / 2**30:.2f} GiB: lower --batch_size.")
    plans.append((spec, model, T, theta, tokens, tokenizer))
  results = []
  for spec, model, T, theta, tokens, tokenizer in plans:
    res = attention.needle_attention(model, tokenizer, tokens, T, trials=trials, rope_theta=theta,
                                     batch_size=batch_size, seed=seed,
                                     show_progress=show_progress, desc=spec.label)
    res["theta_scale"] = float(theta_scale)
    results.append(dict(label=spec.label, result=res))
  figure = "attention.png"
  attention.plot(results, os.path.join(out_dir, figure), top_k=top_k)
  settings = dict(trials=trials, theta_scale=float(theta_scale), seed=seed, top_k=top_k,
                  data_source=data_source or "run's own", figure=figure)
  doc = common.write_json(os.path.join(out_dir, "attention.json"), "attention", settings,
                          [l[3] for l in loaded], results)
  _write_md(out_dir, "attention.md", "Attention to the needle",
            attention.markdown(results, top_k) + f"\n![attention]({figure})\n")
  return doc


def run_learned_s(specs, out_dir="") -> dict:
  """s (and b) per layer and head of each model.

  Writes learned_s.json, learned_s_*.png and learned_s.md into out_dir.

  Args:
    specs: model specs, each `[LABEL=]WORKDIR[@STEP][:VARIANT]` (`common.ModelSpec`): a
      training workdir, a checkpoint step (default the latest) and a variant to evaluate as.
    out_dir: where the results go; '' is WORKDIR/eval of the only model.

  Returns:
    The JSON document written (`common.write_json`).
  """
  loaded, out_dir = _prepare(specs, out_dir, "default")
  results = []
  for spec, model, _, _ in loaded:
    entry = dict(label=spec.label, result=learned_s.head_scalars(model))
    if entry["result"]["s"] is not None:
      entry["figure"] = f"learned_s_{needle.file_stem(spec.label)}.png"
      learned_s.plot(entry, os.path.join(out_dir, entry["figure"]))
    results.append(entry)
  doc = common.write_json(os.path.join(out_dir, "learned_s.json"), "learned_s", {},
                          [l[3] for l in loaded], results)
  _write_md(out_dir, "learned_s.md", "Learned s", learned_s.markdown(results))
  return doc
