"""Test loss per position at context lengths beyond training (the paper's Fig. 5).

The model reads windows of the validation token stream of length T + 1 (inputs, then targets
shifted by one) at evenly spaced offsets; the loss at position p is the mean over windows of
-log p(token p+1 | tokens 0..p). Logits are taken a chunk of positions at a time, so memory
is O(T) whenever attention is (a flash backend).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssmax_jax.evals import common, figures


def window_starts(num_tokens: int, length: int, num_sequences: int, doc_starts=None) -> np.ndarray:
  """Offsets of `num_sequences` windows of length + 1 tokens in the stream: evenly spaced, or
  (doc_starts given) the starts of documents at least that long, evenly chosen among them."""
  if num_sequences < 1:
    raise ValueError(f"num_sequences={num_sequences} must be >= 1.")
  if doc_starts is not None:
    doc_starts = np.asarray(doc_starts, np.int64)
    long_docs = doc_starts[:-1][np.diff(doc_starts) >= length + 1]
    if not len(long_docs):
      raise ValueError(f"no document of the evaluation data has {length} + 1 tokens: use a "
                       "shorter context, documents_only=False, or a --data_source with longer "
                       "documents.")
    pick = np.linspace(0, len(long_docs) - 1, min(num_sequences, len(long_docs)))
    return long_docs[np.unique(pick.round().astype(np.int64))]
  room = num_tokens - (length + 1)
  if room < 0:
    raise ValueError(f"the evaluation data has {num_tokens} tokens, fewer than context length "
                     f"{length} + 1: use a shorter context or a larger --data_source.")
  return np.linspace(0, room, num_sequences).round().astype(np.int64)


@functools.partial(jax.jit, static_argnames=("graphdef", "chunk"))
def _token_nll(graphdef, state, inputs_BT, targets_BT, rope_theta, chunk):
  model = nnx.merge(graphdef, state)
  h_BTD = model.hidden(inputs_BT, rope_theta=rope_theta)
  B, T, D = h_BTD.shape
  C = T // chunk

  def body(_, xs):
    h_BcD, tgt_Bc = xs
    logits_BcV = model.logits(h_BcD)
    lse_Bc = jax.nn.logsumexp(logits_BcV, axis=-1)
    tgt_Bc1 = jnp.take_along_axis(logits_BcV, tgt_Bc[..., None], axis=-1)
    return None, lse_Bc - tgt_Bc1[..., 0]

  h_CBcD = jnp.moveaxis(h_BTD.reshape(B, C, chunk, D), 1, 0)
  tgt_CBc = jnp.moveaxis(targets_BT.reshape(B, C, chunk), 1, 0)
  _, nll_CBc = jax.lax.scan(body, None, (h_CBcD, tgt_CBc))
  return jnp.moveaxis(nll_CBc, 0, 1).reshape(B, T)


def token_nll(model, inputs_BT, targets_BT, *, rope_theta=None, chunk_tokens=8192):
  """float32 [B,T] next-token losses -log p(targets | inputs up to each position)."""
  B, T = inputs_BT.shape
  # The largest divisor of T whose [B, chunk, V] logits stay within chunk_tokens positions.
  chunk = max(c for c in range(1, T + 1) if T % c == 0 and (B * c <= chunk_tokens or c == 1))
  theta = model.config.rope_theta if rope_theta is None else rope_theta
  graphdef, state = nnx.split(model)
  return _token_nll(graphdef, state, jnp.asarray(inputs_BT, jnp.int32),
                    jnp.asarray(targets_BT, jnp.int32), jnp.float32(theta), chunk)


def windowed(values_T, window: int) -> tuple[np.ndarray, np.ndarray]:
  """(starts, means) of consecutive windows of `window` positions (the last may be shorter)."""
  values_T = np.asarray(values_T, np.float64)
  if window < 1:
    raise ValueError(f"window={window} must be >= 1.")
  starts = np.arange(0, len(values_T), window)
  return starts, np.asarray([values_T[s:s + window].mean() for s in starts])


def loss_by_position(model, tokens, length: int, *, num_sequences: int, batch_size: int = 1,
                     rope_theta=None, window: int = 128, chunk_tokens: int = 8192,
                     doc_starts=None, show_progress: bool = True, desc: str = "") -> dict:
  """Per-position mean test loss of `model` on `num_sequences` windows of `length` tokens.

  Args:
    model: a `Transformer`.
    tokens: the flat validation token stream (1-D ints).
    length: T, the context length.
    num_sequences: windows of T + 1 tokens averaged.
    batch_size: windows per forward pass.
    rope_theta: RoPE's base; None is the model's.
    window: positions averaged per point of windowed_loss.
    chunk_tokens: the most logits positions computed at once.
    doc_starts: the corpus' document offsets: puts each window at a document's start (at
      most num_sequences documents of T + 1 tokens or more); None lets windows cross
      document boundaries.
    show_progress: a progress bar.
    desc: its label.

  Returns:
    A dict: context_length, rope_theta, num_sequences, mean_loss, loss_per_position [T],
    window, window_starts, windowed_loss, and the spread over the evaluation windows (the
    standard deviation across sequences, ddof 0) of each sequence's mean loss, mean_loss_std,
    and of its window means, windowed_loss_std.
  """
  starts = window_starts(len(tokens), length, num_sequences, doc_starts)
  total_T = np.zeros(length, np.float64)
  seq_means, seq_windowed = [], []  # per sequence: for the spread only, the means use total_T
  batches = [starts[i:i + batch_size] for i in range(0, len(starts), batch_size)]
  for batch_starts in common.progress(batches, desc=desc, enabled=show_progress):
    rows = np.stack([np.asarray(tokens[s:s + length + 1], np.int32) for s in batch_starts])
    pad = batch_size - len(rows)  # a short last batch is padded so that one compile serves all
    rows = np.concatenate([rows, np.repeat(rows[:1], pad, axis=0)]) if pad else rows
    nll_BT = np.asarray(token_nll(model, rows[:, :-1], rows[:, 1:], rope_theta=rope_theta,
                                  chunk_tokens=chunk_tokens))
    total_T += nll_BT[:len(batch_starts)].sum(0)
    for nll_T in nll_BT[:len(batch_starts)]:
      seq_means.append(float(np.mean(nll_T, dtype=np.float64)))
      seq_windowed.append(windowed(nll_T, window)[1])
  per_position = total_T / len(starts)
  w_starts, w_means = windowed(per_position, window)
  theta = model.config.rope_theta if rope_theta is None else rope_theta
  return dict(context_length=int(length), rope_theta=float(theta), num_sequences=len(starts),
              mean_loss=float(per_position.mean()), loss_per_position=per_position.tolist(),
              window=int(window), window_starts=w_starts.tolist(), windowed_loss=w_means.tolist(),
              mean_loss_std=float(np.std(seq_means)),
              windowed_loss_std=np.std(seq_windowed, axis=0).tolist())


THETA_STYLES = ("-", "--", ":", "-.")


def _sem(curve, key):
  """The standard error of `curve[key]` over its evaluation windows (std / sqrt(n)), or None
  when the curve holds no spread (a file written before the spread was kept)."""
  std = curve.get(key)
  if std is None:
    return None
  return np.asarray(std, np.float64) / np.sqrt(max(1, curve.get("num_sequences") or 1))


def plot(results: list[dict], path: str, title: str = "Test loss by position"):
  """Left: windowed loss over positions at the longest context, one curve per model and theta.
  Right: mean loss against context length. Colour is the model, line style the RoPE theta
  scale; shading and error bars are +-1 standard error over the evaluation windows (where the
  results hold their spread); a dotted line marks the training length."""
  plt = common.pyplot()
  from matplotlib.lines import Line2D
  from matplotlib.patches import Patch
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
  scales = sorted({c["theta_scale"] for e in results for c in e["curves"]})
  style = {s: THETA_STYLES[i % len(THETA_STYLES)] for i, s in enumerate(scales)}
  color = {e["label"]: f"C{i % 10}" for i, e in enumerate(results)}
  spread_n = set()
  for entry in results:
    for scale in scales:
      curves = sorted((c for c in entry["curves"] if c["theta_scale"] == scale),
                      key=lambda c: c["context_length"])
      if not curves:
        continue
      kw = dict(color=color[entry["label"]], linestyle=style[scale])
      drawn = [c for c in curves if c.get("windowed_loss") is not None]
      if drawn:
        top = drawn[-1]  # the longest context with window means
        x = np.asarray(top["window_starts"]) + top["window"] / 2
        y = np.asarray(top["windowed_loss"], np.float64)
        ax.plot(x, y, lw=1.3, **kw)
        sem = _sem(top, "windowed_loss_std")
        if sem is not None:
          ax.fill_between(x, y - sem, y + sem, color=kw["color"], alpha=0.18, lw=0)
          spread_n.add(top["num_sequences"])
      xs = [c["context_length"] for c in curves]
      ys = [c["mean_loss"] for c in curves]
      sems = [_sem(c, "mean_loss_std") for c in curves]
      ax2.plot(xs, ys, marker="o", ms=4, **kw)
      if any(e is not None for e in sems):
        ax2.errorbar(xs, ys, yerr=[0.0 if e is None else float(e) for e in sems], fmt="none",
                     ecolor=kw["color"], elinewidth=1, capsize=3)
        spread_n.update(c["num_sequences"] for c, e in zip(curves, sems) if e is not None)
  for l_train in sorted({e["l_train"] for e in results if e.get("l_train")}):
    for ax_ in (ax, ax2):
      figures.mark_training_length(ax_, l_train, f"training length L={l_train}")
  longest = max(c["context_length"] for e in results for c in e["curves"])
  window = next((c["window"] for e in results for c in e["curves"] if c.get("window")), None)
  ax.set(xlabel="position in the context (tokens)",
         ylabel=f"test loss ({figures.LOSS_UNITS})",
         title=f"{title}, T={longest}" + (f" (means over {window} positions)" if window else ""))
  lengths = sorted({c["context_length"] for e in results for c in e["curves"]})
  ax2.set(xlabel="context length T (tokens)", ylabel=f"mean test loss ({figures.LOSS_UNITS})",
          xscale="log", title="Mean loss over the context")
  ax2.set_xticks(lengths, [str(t) for t in lengths])
  ax2.minorticks_off()
  for ax_ in (ax, ax2):
    ax_.grid(alpha=0.25)
  handles = [Line2D([], [], color=color[e["label"]], lw=2, label=e["label"]) for e in results]
  handles += [Line2D([], [], color="0.3", linestyle=style[s], label=f"RoPE θ×{s:g}")
              for s in scales]
  if spread_n:
    n = f"{min(spread_n)}" if len(spread_n) == 1 else f"{min(spread_n)}-{max(spread_n)}"
    handles.append(Patch(color="0.5", alpha=0.3, label=f"±1 s.e. over {n} evaluation windows"))
  ncol = min(7, len(handles))
  fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=9, frameon=False)
  fig.tight_layout(rect=(0, 0.045 * -(-len(handles) // ncol) + 0.01, 1, 1))
  figures.savefig(fig, path)


def markdown(results: list[dict]) -> str:
  """Mean test loss per model and theta (rows) at each context length (columns)."""
  lengths = sorted({c["context_length"] for e in results for c in e["curves"]})
  lines = ["| model | RoPE θ | " + " | ".join(f"T={t}" for t in lengths) + " |",
           "|---|---|" + "---|" * len(lengths)]
  for entry in results:
    for scale in sorted({c["theta_scale"] for c in entry["curves"]}):
      by_len = {c["context_length"]: c for c in entry["curves"] if c["theta_scale"] == scale}
      theta = next(iter(by_len.values()))["rope_theta"]
      cells = [f"{by_len[t]['mean_loss']:.4f}" if t in by_len else "" for t in lengths]
      lines.append(f"| {entry['label']} | {theta:g} (×{scale:g}) | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"
