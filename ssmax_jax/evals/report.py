"""Gathers evaluation JSON files (common.FORMAT) from run directories into one markdown page.

write_page and relative_to_page also write the reproduction's results page
(ssmax_jax.reproduce.page)."""
import datetime
import glob
import os

from ssmax_jax.evals import attention, common, learned_s, loss_by_position, needle

TITLES = {"loss_by_position": "Test loss by position (Fig. 5)",
          "needle": "Needle in a haystack (section 3.3)",
          "attention": "Attention to the needle (Fig. 7/8)",
          "learned_s": "Learned s (and b) per layer and head"}


_RESULT_FILES = {f"{kind}.json" for kind in common.KINDS}
_KEYS = ("kind", "models", "results")
_MODEL_KEYS = ("label", "variant", "step", "l_train")


def _checked(path: str, doc: dict) -> dict:
  """doc, if it holds what the page reads; else a ValueError naming the file and the keys."""
  missing = [k for k in _KEYS if k not in doc]
  missing += sorted({f"models[].{k}" for m in doc.get("models", ()) for k in _MODEL_KEYS
                     if k not in m})
  if missing or doc["kind"] not in common.KINDS:
    what = f"lacks {', '.join(missing)}" if missing else f"has an unknown kind {doc['kind']!r}"
    raise ValueError(f"{path} {what}: it was not written by this version's evaluations; run "
                     "the evaluation again.")
  return doc


def gather(dirs) -> list[tuple[str, dict]]:
  """[(json path, document)] of every evaluation JSON under `dirs` (searched recursively)."""
  found = []
  for d in dirs:
    if not os.path.isdir(d):
      raise ValueError(f"run directory {d!r} does not exist: pass directories holding evaluation "
                       "results (a workdir, or the --out of an eval command).")
    for path in sorted(glob.glob(os.path.join(d, "**", "*.json"), recursive=True)):
      doc = common.read_json(path)
      if doc is not None:
        found.append((path, _checked(path, doc)))
      elif os.path.basename(path) in _RESULT_FILES:  # ours by name, but unreadable
        raise ValueError(f"{path} is not a readable evaluation result (truncated, or not "
                         "JSON): run its evaluation again, or move the file away.")
  if not found:
    raise ValueError(f"no evaluation results ({common.FORMAT} JSON) under {list(dirs)}: run "
                     "the experiments.eval_* commands first.")
  return found


def _models_line(doc):
  parts = [f"{m['label']} ({m['variant']}, step {m['step']}, l_train {m['l_train']})"
           for m in doc["models"]]
  return "Models: " + "; ".join(parts) + "."


def render(found: list[tuple[str, dict]], out_path: str) -> str:
  """Markdown with one section per kind, a table per result file and links to its figures."""
  out_dir = os.path.dirname(os.path.abspath(out_path))
  lines = ["# Evaluation results", "",
           f"Gathered {datetime.date.today().isoformat()} from {len(found)} result files "
           "by `python -m experiments.report`.", ""]
  for kind in common.KINDS:
    docs = [(p, d) for p, d in found if d["kind"] == kind]
    if not docs:
      continue
    lines += [f"## {TITLES[kind]}", ""]
    for path, doc in docs:
      base = relative_to_page(os.path.dirname(path), out_path)
      lines += [f"From `{os.path.relpath(path, out_dir)}` ({doc['created']}, {doc['platform']}). "
                + _models_line(doc), ""]
      settings = ", ".join(f"{k}={v}" for k, v in doc["settings"].items() if k != "figure")
      if settings:
        lines += [f"Settings: {settings}.", ""]
      if kind == "loss_by_position":
        lines.append(loss_by_position.markdown(doc["results"]))
      elif kind == "needle":
        lines.append(needle.markdown(doc["results"], base))
      elif kind == "attention":
        lines.append(attention.markdown(doc["results"]))
      else:
        lines.append(learned_s.markdown(doc["results"], base))
      figure = doc["settings"].get("figure")
      if figure:
        lines += [f"![{kind}]({os.path.join(base, figure)})", ""]
  return write_page(lines, out_path)


def relative_to_page(path: str, out_path: str) -> str:
  """`path` relative to the directory of the page at out_path: what its links name."""
  return os.path.relpath(os.path.abspath(path), os.path.dirname(os.path.abspath(out_path)))


def write_page(lines: list[str], out_path: str) -> str:
  """Writes the lines of a markdown page to out_path (making its directory) and returns the text."""
  text = "\n".join(lines)
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  with open(out_path, "w") as f:
    f.write(text)
  return text
