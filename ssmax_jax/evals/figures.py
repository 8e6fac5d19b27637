"""The shared style of the evaluation and reproduction figures: resolution, loss units, the
training-length marker and heatmap cells with text that stays readable on any colour."""
import numpy as np

DPI = 150
LOSS_UNITS = "nats per token"
CELL_FONT_SIZE = 8
TICK_FONT_SIZE = 9
# Relative luminance (WCAG) below which white text reads better than black: the crossing point
# of the two contrast ratios, (L + 0.05) / 0.05 = 1.05 / (L + 0.05).
DARK_LUMINANCE = 0.179


def savefig(fig, path: str):
  """Writes `fig` to `path` at DPI and closes it."""
  import matplotlib.pyplot as plt
  fig.savefig(path, dpi=DPI)
  plt.close(fig)


def luminance(rgba) -> float:
  """Relative luminance (WCAG 2) of an sRGB colour with channels in [0, 1]."""
  c = np.asarray(rgba, np.float64)[:3]
  linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
  return float(linear @ np.array([0.2126, 0.7152, 0.0722]))


def text_color(rgba) -> str:
  """'white' on a dark cell colour, 'black' on a light one."""
  return "white" if luminance(rgba) < DARK_LUMINANCE else "black"


def annotate_cells(ax, im, values, fmt="{:.2f}", fontsize=CELL_FONT_SIZE):
  """Writes each value of the 2-D `values` (as drawn by `im`, an AxesImage) on its cell, in the
  colour that contrasts with the cell's."""
  values = np.asarray(values)
  for (r, c), v in np.ndenumerate(values):
    ax.text(c, r, fmt.format(v), ha="center", va="center", fontsize=fontsize,
            color=text_color(im.cmap(im.norm(v))))


def heatmap_size(rows: int, cols: int, *, cell_w=0.72, cell_h=0.42, min_w=4.8, min_h=3.4,
                 extra_w=1.9, extra_h=1.3) -> tuple[float, float]:
  """(width, height) in inches of one heatmap panel (axes, labels and colour bar) whose cells
  are large enough for CELL_FONT_SIZE text; small grids get at least min_w x min_h."""
  return max(min_w, extra_w + cell_w * cols), max(min_h, extra_h + cell_h * rows)


def mark_training_length(ax, x, label: str, at="top"):
  """A dotted vertical line at x (the training length in the axis' units), labelled along it at
  the top or the bottom (`at`) of the axes."""
  ax.axvline(x, color="0.35", linestyle=":", linewidth=1.2, zorder=0)
  top = at == "top"
  ax.annotate(label, xy=(x, 1.0 if top else 0.0), xycoords=("data", "axes fraction"),
              xytext=(3, -3 if top else 3), textcoords="offset points", ha="left",
              va="top" if top else "bottom", fontsize=8, color="0.25", rotation=90)
