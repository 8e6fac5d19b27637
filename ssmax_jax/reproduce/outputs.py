"""The evaluation files a call copies into its --out directory: compact JSON (the per-position
losses dropped, their windowed means kept) and the figures, one needle figure for all models."""
import copy
import json
import os
import shutil

from ssmax_jax.evals import common, loss_by_position, needle
from ssmax_jax.reproduce.metrics import key


def plot_loss(doc: dict, metrics: dict, path: str):
  """The loss-by-position figure, with the means at shorter lengths taken from prefixes (when
  loss_from_prefix evaluated only the longest) as points of the mean-loss panel."""
  entries = copy.deepcopy(doc["results"])
  for entry in entries:
    have = {(key(c["theta_scale"]), key(c["multiple"])) for c in entry["curves"]}
    for theta, by_m in metrics[entry["label"]].get("loss", {}).items():
      for m, value in by_m.items():
        if (theta, m) not in have:
          entry["curves"].append(dict(theta_scale=float(theta), multiple=float(m),
                                      context_length=int(round(float(m) * entry["l_train"])),
                                      mean_loss=value))
  loss_by_position.plot(entries, path)


def write_outputs(eval_dir: str, out_dir: str, docs: dict, metrics: dict):
  """Copies the evaluation results of eval_dir into out_dir (every file of OUTPUT_FILES but the
  summary)."""
  os.makedirs(out_dir, exist_ok=True)
  plot_loss(docs["loss_by_position"], metrics, os.path.join(out_dir, "loss_by_position.png"))
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
  needle.plot_heatmaps(docs["needle"]["results"], os.path.join(out_dir, "needle.png"))
