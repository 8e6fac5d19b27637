"""The results page's figure: every variant that ran, by context length."""
from ssmax_jax.evals import common, figures
from ssmax_jax.reproduce.metrics import LONG_THETA
from ssmax_jax.reproduce.seeds import seeds
from ssmax_jax.reproduce.variants import PAPER_VARIANTS


def plot_comparison(rws, path: str, groups=None) -> bool:
  """Every variant that ran on one figure: mean test loss by context length at RoPE θ×1 and
  θ×50, and needle accuracy (fine-tuned models, θ×50). Variants below the target scale are
  dashed, seed repeats (`groups`) dotted in their variant's colour. Returns False (and writes
  nothing) when no variant has metrics."""
  ran = [(i, PAPER_VARIANTS[v], r, "-" if r["at_scale"] else "--")
         for i, (v, r) in enumerate(rws.items()) if r]
  index = {v: i for i, v in enumerate(rws)}
  ran += [(index[v], f"{PAPER_VARIANTS[v]}, seeds {seeds(r['summary'])}", r, ":")
          for v, group in (groups or {}).items() for r in group[1:]]
  if not ran:
    return False
  plt = common.pyplot()
  panels = [("loss", "1", "Mean test loss, RoPE θ×1", f"mean test loss ({figures.LOSS_UNITS})"),
            ("loss", LONG_THETA, f"Mean test loss, RoPE θ×{LONG_THETA}",
             f"mean test loss ({figures.LOSS_UNITS})"),
            ("needle", LONG_THETA, f"Needle accuracy after fine-tuning, θ×{LONG_THETA}",
             "retrieval accuracy (exact match, mean over depths)")]
  lengths = {r.get("seq_len") for _, _, r, _ in ran}
  train_label = (f"training length L={lengths.pop()}" if len(lengths) == 1 and None not in lengths
                 else "training length")
  fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
  for ax, (kind, theta, title, ylabel) in zip(axes, panels):
    ticks = set()
    for i, name, r, style in ran:  # one colour per variant on every page
      curve = r["metrics"].get(kind, {}).get(theta)
      if curve:
        xs = sorted(curve, key=float)
        ticks.update(float(x) for x in xs)
        ax.plot([float(x) for x in xs], [curve[x] for x in xs], marker="o", label=name,
                color=f"C{i}", linestyle=style)
    ax.set_xscale("log")
    ax.set_xticks(sorted(ticks), [f"{t:g}x" for t in sorted(ticks)])
    ax.minorticks_off()
    ax.set_xlabel("context length (x the training length)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.25)
    figures.mark_training_length(ax, 1.0, train_label,
                                 at="bottom" if kind == "needle" else "top")
  axes[-1].set_ylim(-0.03, 1.03)
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=9)
  fig.tight_layout(rect=(0, 0.12, 1, 1))
  figures.savefig(fig, path)
  return True
