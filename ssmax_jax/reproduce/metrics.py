"""The numbers the page reads: a call's metrics from its evaluation documents, and the measures
of one page row (mean loss, its rise with context, needle accuracy)."""
import numpy as np

LONG_THETA = "50"  # long-context loss and needle are read at RoPE theta x50, the paper's setting


def key(x) -> str:
  """The JSON key of a multiple or theta scale: 1 -> '1', 2.5 -> '2.5'."""
  return f"{float(x):g}"


def _loss_metrics(lbp: dict, prefix_multiples, out: dict):
  for entry in lbp["results"]:
    losses = out.setdefault(entry["label"], {}).setdefault("loss", {})
    for c in entry["curves"]:
      losses.setdefault(key(c["theta_scale"]), {})[key(c["multiple"])] = float(c["mean_loss"])
    for c in entry["curves"]:
      per_position = c.get("loss_per_position")
      by_m = losses[key(c["theta_scale"])]
      for pm in prefix_multiples:
        if per_position is not None and key(pm) not in by_m and pm < c["multiple"]:
          n = int(round(pm * c["context_length"] / c["multiple"]))
          by_m[key(pm)] = float(np.mean(per_position[:n]))
    for by_m in losses.values():
      ordered = sorted(by_m.items(), key=lambda kv: float(kv[0]))
      by_m.clear()
      by_m.update(ordered)


def model_metrics(docs: dict, prefix_multiples=()) -> dict:
  """{label: {'loss': {theta: {multiple: mean loss}}, 'needle': {theta: {multiple: mean accuracy
  over depths}}, 'attention': {...}, 'learned_s': {...}}} from the four evaluation documents of
  one call (kind -> the runner's returned doc).

  prefix_multiples: multiples m without a curve of their own get the mean loss of the first
  m x l_train positions of a longer curve (its loss_per_position; exact for causal attention,
  where a position's loss does not depend on later tokens).
  """
  out = {}
  if docs.get("loss_by_position"):
    _loss_metrics(docs["loss_by_position"], prefix_multiples, out)
  nd = docs.get("needle")
  if nd:
    l_train = {m["label"]: m["l_train"] for m in nd["models"]}
    for entry in nd["results"]:
      m = out.setdefault(entry["label"], {})
      for g in entry["grids"]:
        acc = np.asarray(g["accuracy"], np.float64)  # [length, depth]
        m.setdefault("needle", {})[key(g["theta_scale"])] = {
            key(t / l_train[entry["label"]]): float(a) for t, a in zip(g["context_lengths"],
                                                                       acc.mean(axis=1))}
  at = docs.get("attention")
  if at:
    for entry in at["results"]:
      r = entry["result"]
      top = r["top_heads"][0]
      out.setdefault(entry["label"], {})["attention"] = dict(
          context_length=r["context_length"], theta_scale=r.get("theta_scale"),
          trials=r["trials"], top_head=dict(layer=top["layer"], head=top["head"],
                                            mean=float(top["mean"])),
          mean_over_heads=float(np.mean(r["mean"])))
  ls = docs.get("learned_s")
  if ls:
    for entry in ls["results"]:
      r = entry["result"]
      d = dict(variant=r["variant"], s_init=r["s_init"], fixed_s=r["fixed_s"])
      for name in ("s", "b"):
        if r[name] is not None:
          arr = np.asarray(r[name], np.float64)
          d[f"{name}_mean"] = float(arr.mean())
          d[f"{name}_mean_per_layer"] = arr.mean(axis=1).tolist()
      out.setdefault(entry["label"], {})["learned_s"] = d
  return out


# --- Measures of one row (summary.rows) -----------------------------------------------------------

def loss_at(row, theta, multiple):
  """The mean test loss of `row` at RoPE theta x`theta` and `multiple` x l_train, or None."""
  return row["metrics"].get("loss", {}).get(theta, {}).get(key(multiple))


def rise_at(row, theta, multiple):
  """Relative change of the mean loss from 1x to `multiple`x."""
  lo, hi = loss_at(row, theta, 1), loss_at(row, theta, multiple)
  return None if lo is None or hi is None else hi / lo - 1.0


def needle_at(row, multiple, theta=LONG_THETA):
  """The needle accuracy (mean over depths) of `row` at `multiple` x l_train, or None."""
  return row["metrics"].get("needle", {}).get(theta, {}).get(key(multiple))


def measure(row, key_):
  """A claim's measure of one row: ('final_train_loss',), ('loss', theta, multiple),
  ('rise', theta, multiple) or ('needle', multiple)."""
  kind = key_[0]
  if kind == "final_train_loss":
    return row.get("final_train_loss")
  if kind == "needle":
    return needle_at(row, key_[1])
  return (loss_at if kind == "loss" else rise_at)(row, key_[1], key_[2])


def measure_name(key_) -> str:
  kind = key_[0]
  if kind == "final_train_loss":
    return "final train loss"
  if kind == "needle":
    return f"needle at {key_[1]:g}x"
  return (f"test loss at {key_[2]:g}x" if kind == "loss" else f"loss rise 1x -> {key_[2]:g}x"
          ) + f", θ×{key_[1]}"


def format_measure(key_, x) -> str:
  return {"final_train_loss": f"{x:.4f}", "loss": f"{x:.4f}", "rise": f"{x * 100:.1f} points",
          "needle": f"{x:.2f}"}[key_[0]]
