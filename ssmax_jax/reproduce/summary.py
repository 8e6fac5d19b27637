"""summary.json: what a call records about itself (versions, device, corpus, configs, each
model's training numbers and metrics), and reading the summaries back into the page's rows."""
import datetime
import importlib.metadata
import json
import os
import platform

from ssmax_jax.evals import common
from ssmax_jax.reproduce import provenance
from ssmax_jax.reproduce.variants import (FORMAT, MIN_SEQ_LEN, MIN_TOKENS, NEEDLE_SUFFIX,
                                          OUTPUT_FILES, PAPER_VARIANTS, SUMMARY_FILE)

VERSION_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy",
                    "ml-collections", "tiktoken")


def versions() -> dict:
  out = {"python": platform.python_version()}
  for name in VERSION_PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  out["ssmax-jax"] = provenance.package_version()  # names the code where there is no checkout
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


def model_entries(models, phases, trained: dict, metrics: dict) -> dict:
  """{label: entry} of every evaluated model: its training numbers (an inference variant: those
  of the model it reads), spec, metrics and, if any, its needle fine-tuning."""
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
  return entries


def _plain(config) -> dict:
  return json.loads(json.dumps(config.to_dict(), default=str))


def make_summary(variant: str, recipe, command: str, corpus: dict, phases, entries: dict,
                 wall: dict) -> dict:
  """The summary document; `wall` is kept by reference (its total is added after writing the
  outputs)."""
  summary = dict(
      format=FORMAT, variant=variant, preset=recipe.preset, command=command,
      created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      device=device_info(), versions=versions(), corpus=corpus,
      config=_plain(phases[0].config), recipe=_plain(recipe),
      models=entries, files=list(OUTPUT_FILES), wall_s=wall)
  if variant == "softmax":
    summary["continue_config"] = _plain(phases[1].config)
  tuned = [ph for ph in phases if ph.label.endswith(NEEDLE_SUFFIX)]
  if tuned:
    summary["needle_finetune_config"] = _plain(tuned[0].config)
  return summary


def write_summary(summary: dict, out_dir: str):
  with open(os.path.join(out_dir, SUMMARY_FILE), "w") as f:
    json.dump(summary, f, indent=1, default=common._jsonable)  # pylint: disable=protected-access


# --- Reading summaries back -----------------------------------------------------------------------

def read_summary(directory: str) -> dict:
  path = os.path.join(directory, SUMMARY_FILE)
  if not os.path.isfile(path):
    raise ValueError(f"--results: {path} does not exist; pass the --out directories of finished "
                     "`python -m experiments.reproduce` runs.")
  try:
    with open(path) as f:
      doc = json.load(f)
  except ValueError as e:
    raise ValueError(f"--results: {path} is not valid JSON ({e}); run that variant "
                     "again.") from None
  if not isinstance(doc, dict) or doc.get("format") != FORMAT:
    raise ValueError(f"--results: {path} is not a reproduce summary (format {FORMAT}).")
  return doc


def gather(dirs) -> list[tuple[str, dict]]:
  """[(dir, summary)] of each directory; an empty list gives the page with nothing run."""
  found = [(d, read_summary(d)) for d in dirs if d]
  presets = sorted({s["preset"] for _, s in found})
  if len(presets) > 1:
    raise ValueError(f"--results mix presets {presets}: the claims compare variants at one scale; "
                     "report one preset at a time.")
  seen = {}
  for d, s in found:
    for label in s["models"]:
      if label in seen:
        raise ValueError(f"--results: variant {label!r} is in both {seen[label]} and {d}; pass "
                         "one of them.")
      seen[label] = d
  return found


def rows(found, min_tokens=MIN_TOKENS, min_seq_len=MIN_SEQ_LEN) -> dict:
  """{variant: row} for the eight variants: row None when not run, else the summary's model
  entry plus `dir`, `summary`, `at_scale` (tokens and sequence length at the target scale).

  A needle grid read from a model without needle fine-tuning (summaries from before the recipe
  fine-tuned) is kept as metrics['needle_zero_shot'] and counts in no claim: the paper
  fine-tunes first."""
  out = {v: None for v in PAPER_VARIANTS}
  for d, s in found:
    for label, m in s["models"].items():
      at_scale = m["tokens"] >= min_tokens and m["seq_len"] >= min_seq_len
      metrics = dict(m["metrics"])
      if "needle_finetune" not in m and "needle" in metrics:
        metrics["needle_zero_shot"] = metrics.pop("needle")
      out[label] = dict(m, label=label, dir=d, summary=s, at_scale=at_scale, metrics=metrics)
  return out
