"""The corpus of a call (config.recipe.corpus): prepared once into a data directory and reused
while the files, tokenizer and split are unchanged."""
import hashlib
import json
import os
import sysconfig
import time


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


def _ready_corpus(recipe, tokenizer: str) -> tuple[str, dict]:
  """(data.source, corpus info) of 'shakespeare' or a prepared directory, used as it is."""
  from ssmax_jax import data
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


def prepare_corpus(recipe, tokenizer: str, data_dir: str) -> tuple[str, dict]:
  """(data.source, corpus info); prepares text files once into data_dir (reused when the files,
  tokenizer and split are unchanged). 'shakespeare' and prepared directories are used as they
  are."""
  from ssmax_jax import data
  pattern = corpus_glob(recipe.corpus)
  if pattern is None:
    return _ready_corpus(recipe, tokenizer)
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
