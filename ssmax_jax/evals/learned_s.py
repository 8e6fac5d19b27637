"""The learned SSMax scale s (and bias b) of every layer and head: table and heatmap."""
import os

import numpy as np

from ssmax_jax import ops
from ssmax_jax.evals import common, figures


def head_scalars(model) -> dict:
  """The attention variant's scalars of every layer and head.

  Args:
    model: a `Transformer`.

  Returns:
    `{'variant', 's': [L][N] or None, 'b': [L][N] or None, 's_init', 'fixed_s'}`: s and b are
    None where the variant does not learn them; fixed_s is set for ssmax_fixed.
  """
  cfg = model.config
  s_init = None
  if cfg.attention in ops.LEARNED_VARIANTS:
    s_init = cfg.s_init if cfg.s_init is not None else ops.default_s_init(cfg.l_train)
  out = dict(variant=cfg.attention, s=None, b=None, fixed_s=None, s_init=s_init)
  for name in ("s", "b"):
    values = [getattr(a.logit_scale, name) for a in model.attention_layers()]
    if all(v is not None for v in values):
      out[name] = np.stack([np.asarray(v[...], np.float64) for v in values]).tolist()
  if cfg.attention == "ssmax_fixed":
    out["fixed_s"] = float(cfg.fixed_s)
  return out


def _table(name, values_LN):
  arr = np.asarray(values_LN)
  L, N = arr.shape
  lines = [f"| {name} | " + " | ".join(f"h{h}" for h in range(N)) + " | mean |",
           "|---|" + "---|" * (N + 1)]
  for layer in range(L):
    lines.append(f"| layer {layer} | " + " | ".join(f"{v:.4f}" for v in arr[layer])
                 + f" | {arr[layer].mean():.4f} |")
  return "\n".join(lines)


def markdown(results: list[dict], base_dir: str = "") -> str:
  out = []
  for entry in results:
    r = entry["result"]
    out.append(f"**{entry['label']}** (variant {r['variant']}"
               + (f", s init {r['s_init']:.4f}" if r.get("s_init") else "") + ")")
    out.append("")
    if r["s"] is None:
      out.append(f"No learned s: variant {r['variant']}"
                 + (f" uses the constant s = {r['fixed_s']:g}." if r["fixed_s"] is not None
                    else " has no s."))
    for name in ("s", "b"):
      if r[name] is not None:
        out.append(_table(name, r[name]))
        out.append("")
    if entry.get("figure"):
      out.append(f"![learned s {entry['label']}]({os.path.join(base_dir, entry['figure'])})")
    out.append("")
  return "\n".join(out)


def plot(entry: dict, path: str):
  """Heatmaps of s (and b) [layer x head] of one model; b's colours are centred on 0."""
  plt = common.pyplot()
  r = entry["result"]
  names = [n for n in ("s", "b") if r[n] is not None]
  L, N = np.asarray(r[names[0]]).shape
  w, h = figures.heatmap_size(L, N)
  fig, axes = plt.subplots(1, len(names), figsize=(w * len(names), h), squeeze=False,
                           layout="constrained")
  for ax, name in zip(axes[0], names):
    arr = np.asarray(r[name])
    if name == "b":
      top = float(np.abs(arr).max()) or 1.0
      im = ax.imshow(arr, cmap="coolwarm", vmin=-top, vmax=top, aspect="auto")
    else:
      im = ax.imshow(arr, cmap="viridis", aspect="auto")
    figures.annotate_cells(ax, im, arr)
    ax.set_xticks(range(arr.shape[1]))
    ax.set_yticks(range(arr.shape[0]))
    title = f"{entry['label']}: learned {name}"
    if name == "s" and r.get("s_init"):
      title += f" (init {r['s_init']:.3f})"
    ax.set(xlabel="head", ylabel="layer", title=title)
    fig.colorbar(im, ax=ax, label=name)
  figures.savefig(fig, path)
