"""Every figure renders from a small result in the format its evaluation writes, at the target
resolution, with heatmap text that contrasts with its cell (fast: Agg, no model)."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.image  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib import colormaps  # noqa: E402

from ssmax_jax.evals import attention, figures, learned_s, loss_by_position, needle  # noqa: E402
from ssmax_jax.reproduce import figure, metrics, outputs  # noqa: E402

MIN_DPI = 150


def _curve(length, scale, *, l_train=64, window=16, spread=True, seed=0):
  rng = np.random.default_rng([length, int(scale), seed])
  starts = list(range(0, length, window))
  loss = (2.0 + 0.3 * np.log1p(np.arange(len(starts))) / scale + rng.normal(0, 0.05,
                                                                             len(starts)))
  c = dict(context_length=length, rope_theta=1e4 * scale, num_sequences=4,
           mean_loss=float(loss.mean()), window=window, window_starts=starts,
           windowed_loss=loss.tolist(), theta_scale=float(scale), multiple=length / l_train)
  if spread:
    c.update(mean_loss_std=0.1, windowed_loss_std=rng.uniform(0.1, 0.3, len(starts)).tolist())
  return c


def _loss_results(spread=True):
  """Two models x two theta scales x two lengths (loss_by_position.json's `results`)."""
  return [dict(label=label, l_train=64,
               curves=[_curve(t, s, spread=spread, seed=i) for s in (1, 50) for t in (64, 256)])
          for i, label in enumerate(("softmax", "ssmax"))]


def _grid(lengths=(64, 128, 256), depths=(0.0, 0.5, 1.0), scale=50):
  acc = np.linspace(0, 1, len(lengths) * len(depths)).reshape(len(lengths), len(depths))
  return dict(context_lengths=list(lengths), depths=list(depths), trials=4,
              rope_theta=1e4 * scale, theta_scale=float(scale), method="teacher_forcing",
              accuracy=acc.tolist(), correct=(acc * 4).astype(int).tolist())


def _attention_result(L=2, N=4, scale=0.05):
  rng = np.random.default_rng(0)
  mean = rng.uniform(0, scale, (L, N))
  std = mean / 2
  order = np.argsort(-mean, axis=None)
  top = [dict(layer=int(j // N), head=int(j % N), mean=float(mean.flat[j]),
              std=float(std.flat[j])) for j in order]
  return dict(context_length=128, trials=8, rope_theta=1e4, theta_scale=1.0,
              mean=mean.tolist(), std=std.tolist(), top_heads=top)


def _check_png(path, min_w=0, min_h=0):
  from PIL import Image
  with Image.open(path) as im:
    dpi = im.info["dpi"]
    size = im.size
  assert min(dpi) >= MIN_DPI - 0.5, dpi  # PNG stores dots per metre: 150 reads back 149.9994
  assert size[0] >= min_w and size[1] >= min_h, size
  assert matplotlib.image.imread(path).shape[:2] == size[::-1]
  return size


@pytest.mark.parametrize("spread", [True, False], ids=["with_spread", "old_file"])
def test_loss_by_position_figure(tmp_path, spread):
  path = tmp_path / "loss.png"
  loss_by_position.plot(_loss_results(spread), str(path))
  _check_png(path, 1900, 750)


def test_reproduce_loss_figure_adds_prefix_means_without_spread(tmp_path):
  doc = dict(results=_loss_results())
  metric = {e["label"]: dict(loss={"1": {"0.5": 1.9, "1": 2.0}, "50": {"0.5": 1.95}})
            for e in doc["results"]}
  path = tmp_path / "loss.png"
  outputs.plot_loss(doc, metric, str(path))
  _check_png(path, 1900, 750)
  assert len(doc["results"][0]["curves"]) == 4  # the document itself is left as it was


def test_needle_heatmaps(tmp_path):
  small = tmp_path / "small.png"
  needle.plot_heatmap(_grid(), str(small), "ssmax θ×50")
  w, h = _check_png(small, 700, 500)  # a 3 x 3 grid: at least 4.8 x 3.4 inches
  big = tmp_path / "big.png"
  needle.plot_heatmap(_grid(lengths=(64, 128, 256, 512, 1024, 2048),
                            depths=tuple(np.linspace(0, 1, 11))), str(big), "big")
  W, H = _check_png(big)
  assert W > w and H > h  # the figure grows with the grid
  many = tmp_path / "all.png"
  needle.plot_heatmaps([dict(label="softmax", grids=[_grid(scale=1), _grid()]),
                        dict(label="ssmax", grids=[_grid(), _grid()]),
                        dict(label="bias", grids=[_grid()])], str(many))
  _check_png(many, 2 * w, 2 * h * 0.9)  # five grids: two rows of up to four


def test_heatmap_cell_text_contrasts_with_the_cell():
  assert figures.text_color((0, 0, 0, 1)) == "white"
  assert figures.text_color((1, 1, 1, 1)) == "black"
  viridis, greens = colormaps["viridis"], colormaps["RdYlGn"]
  assert figures.text_color(viridis(0.0)) == "white"  # dark purple
  assert figures.text_color(viridis(1.0)) == "black"  # yellow
  assert figures.text_color(greens(0.0)) == "white"  # dark red: needle accuracy 0
  assert figures.text_color(greens(0.5)) == "black"  # pale yellow
  assert figures.text_color(greens(1.0)) == "white"  # dark green: accuracy 1


def test_heatmap_cells_are_annotated_in_their_contrast_colour():
  plt = matplotlib.pyplot
  fig, ax = plt.subplots()
  needle.draw_heatmap(ax, _grid())
  texts = {t.get_text(): t for t in ax.texts}
  assert texts["0.00"].get_color() == "white" and texts["1.00"].get_color() == "white"
  assert texts["0.50"].get_color() == "black"
  assert min(t.get_fontsize() for t in ax.texts) >= 8
  plt.close(fig)


def test_learned_s_heatmap(tmp_path):
  rng = np.random.default_rng(0)
  for variant, b in (("ssmax", None), ("ssmax_bias", rng.normal(0, 0.2, (2, 3)).tolist())):
    entry = dict(label=variant, result=dict(variant=variant, s=rng.uniform(0, 0.3, (2, 3)).tolist(),
                                            b=b, s_init=0.168, fixed_s=None))
    path = tmp_path / f"{variant}.png"
    learned_s.plot(entry, str(path))
    _check_png(path, 700 * (2 if b else 1), 500)


def test_attention_bars_fit_small_weights(tmp_path, monkeypatch):
  results = [dict(label="softmax", result=_attention_result()),
             dict(label="ssmax", result=_attention_result(scale=0.02))]
  path = tmp_path / "attention.png"
  ylims, save = [], figures.savefig
  monkeypatch.setattr(figures, "savefig",
                      lambda fig, p: (ylims.append(fig.axes[0].get_ylim()), save(fig, p)))
  attention.plot(results, str(path), top_k=5)
  _check_png(path, 1500, 1000)
  top = max(h["mean"] + h["std"] for r in results for h in r["result"]["top_heads"][:5])
  assert ylims[0][0] == 0 and top < ylims[0][1] < 1.2 * top  # fits the data, not 0..1


def test_results_page_figure(tmp_path):
  curve = {metrics.key(m): 2.0 + 0.1 * m for m in (1, 2, 5)}
  acc = {metrics.key(m): 1.0 - 0.2 * m for m in (1, 2, 5)}
  row = dict(at_scale=True, seq_len=64,
             metrics=dict(loss={"1": curve, metrics.LONG_THETA: curve},
                          needle={metrics.LONG_THETA: acc}))
  rws = {"softmax": row, "ssmax": dict(row, at_scale=False), "ssmax_bias": None}
  path = tmp_path / "results.png"
  assert figure.plot_comparison(rws, str(path))
  _check_png(path, 2500, 700)
  assert not figure.plot_comparison({"softmax": None}, str(tmp_path / "none.png"))
