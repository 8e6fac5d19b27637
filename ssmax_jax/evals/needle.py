"""Needle in a haystack (paper section 3.3): exact-match retrieval over context length x depth.

A trial hides "The special magic {city} number is: {7 digits}." at a depth of a haystack cut
from the validation stream, asks for the number, and decodes greedily with the KV cache. The
prompt has exactly the cell's context length (the needle example is built `answer tokens`
longer and the answer cut off), so the trials of one length share one compiled decoder.
"""
import concurrent.futures
import functools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssmax_jax import data
from ssmax_jax.evals import common, figures
from ssmax_jax.models import generate


def needle_trial(tokenizer, tokens, length: int, depth: float, rng: np.random.Generator) -> dict:
  """A needle example whose prompt is `length` tokens: the data's dict plus prompt [length] and
  answer [A] (the number's tokens). City, number and the haystack offset come from `rng`."""
  city = str(rng.choice(list(data.CITIES)))
  number = str(rng.integers(10**6, 10**7))
  answer_len = len(tokenizer.encode(f" {number}"))
  total = length + answer_len
  if len(tokens) < total:
    raise ValueError(f"the evaluation data has {len(tokens)} tokens, fewer than context length "
                     f"{length} + the answer: use a shorter context or a larger --data_source.")
  offset = int(rng.integers(0, len(tokens) - total + 1))
  hay = np.asarray(tokens[offset:offset + total], np.int32)
  ex = data.needle_example(tokenizer, hay, total, depth, city=city, number=number)
  assert ex["last_prompt_index"] == length - 1, (ex["last_prompt_index"], length)
  ex["prompt"], ex["answer"] = ex["tokens"][:length], ex["tokens"][length:]
  return ex


def min_context_length(tokenizer) -> int:
  """The shortest prompt a needle example fits in (the needle, the question, a few haystack tokens)."""
  fixed = tokenizer.encode("\nThe special magic Santiago number is: 8106422.\nWhat is the special"
                           " magic Santiago number? The special magic Santiago number is:")
  return len(fixed) + 8


def greedy_decode(model, prompt_BT, max_new: int, *, rope_theta=None) -> np.ndarray:
  """[B, max_new] greedy continuation with the KV cache (models.generate, compiled once per
  shape and reused across the grid)."""
  out = generate(model, jnp.asarray(prompt_BT, jnp.int32), max_new, rope_theta=rope_theta)
  return np.asarray(out[:, prompt_BT.shape[1]:])


@functools.partial(jax.jit, static_argnames=("graphdef", "answer_len"))
def _teacher_forced(graphdef, state, tokens_BT, start, rope_theta, answer_len):
  model = nnx.merge(graphdef, state)
  h_BTD = model.hidden(tokens_BT, rope_theta=rope_theta)
  h_BAD = jax.lax.dynamic_slice_in_dim(h_BTD, start - 1, answer_len, axis=1)
  return jnp.argmax(model.logits(h_BAD), -1).astype(jnp.int32)


def teacher_forced_argmax(model, prompt_BT, answer_BA, *, rope_theta=None) -> np.ndarray:
  """[B, A] argmax predictions at the answer positions given the true answer prefix: one forward.
  All A match exactly when greedy decoding would produce the answer."""
  B, T = prompt_BT.shape
  tokens = np.concatenate([prompt_BT, answer_BA], axis=1)
  theta = model.config.rope_theta if rope_theta is None else rope_theta
  graphdef, state = nnx.split(model)
  return np.asarray(_teacher_forced(graphdef, state, jnp.asarray(tokens, jnp.int32), T,
                                    jnp.float32(theta), answer_BA.shape[1]))


def compile_teacher_forced(model, shapes, *, rope_theta=None):
  """Compiles the teacher-forced forward for every (batch, prompt length, answer length) in
  `shapes` at once, in threads (XLA compiles without the GIL), so that the calls that follow find
  their executables in jit's cache: one compilation per context length per model and θ is most
  of a short grid's time."""
  graphdef, state = nnx.split(model)
  theta = jnp.float32(model.config.rope_theta if rope_theta is None else rope_theta)

  def compile_one(shape):
    B, T, A = shape
    tokens = jax.ShapeDtypeStruct((B, T + A), jnp.int32)
    _teacher_forced.lower(graphdef, state, tokens, T, theta, A).compile()

  shapes = sorted(set(shapes))
  with concurrent.futures.ThreadPoolExecutor(max(1, min(len(shapes), os.cpu_count() or 1))) as pool:
    list(pool.map(compile_one, shapes))


def cell_rng(seed: int, length: int, depth_index: int) -> np.random.Generator:
  return np.random.default_rng([seed, length, depth_index])


def needle_grid(model, tokenizer, tokens, lengths, depths, *, trials: int = 20,
                rope_theta=None, batch_size: int = 8, seed: int = 0, method: str = "generate",
                show_progress: bool = True, desc: str = "") -> dict:
  """Exact-match accuracy of the 7-digit answer on a lengths x depths grid.

  Args:
    model: a `Transformer`.
    tokenizer: the model's tokenizer (`ssmax_jax.data.get_tokenizer`).
    tokens: the flat validation token stream the haystacks are cut from.
    lengths: context lengths (prompt tokens).
    depths: needle depths in [0, 1].
    trials: needles per cell.
    rope_theta: RoPE's base; None is the model's.
    batch_size: prompts per decoding call.
    seed: draws the cities, numbers and haystacks (`cell_rng`).
    method: 'generate' (greedy decoding with the KV cache) or 'teacher_forcing' (argmax at
      each answer position given the true prefix: the same exact match in one forward, no
      generated text).
    show_progress: a progress bar.
    desc: its label.

  Returns:
    A dict: context_lengths, depths, trials, rope_theta, method, accuracy [len x depth],
    correct [len x depth], predictions `[len][depth][trial]` (decoded text) and numbers (the
    answers).
  """
  if method not in ("generate", "teacher_forcing"):
    raise ValueError(f"method={method!r}; choose 'generate' or 'teacher_forcing'.")
  if trials < 1 or batch_size < 1:
    raise ValueError(f"trials={trials} and batch_size={batch_size} must be >= 1.")
  for d in depths:
    if not 0.0 <= d <= 1.0:
      raise ValueError(f"depth {d} is outside [0, 1].")
  shortest = min_context_length(tokenizer)
  if min(lengths) < shortest:
    raise ValueError(f"context length {min(lengths)} is too short for a needle example with "
                     f"tokenizer {tokenizer.name!r}: use at least {shortest}.")
  correct = np.zeros((len(lengths), len(depths)), np.int64)
  predictions = [[[] for _ in depths] for _ in lengths]
  numbers = [[[] for _ in depths] for _ in lengths]
  grid_cells = [[(di, needle_trial(tokenizer, tokens, length, depth, rng))
                 for di, depth in enumerate(depths)
                 for rng in [cell_rng(seed, length, di)] for _ in range(trials)]
                for length in lengths]
  answer_lens = [max(len(ex["answer"]) for _, ex in cells) for cells in grid_cells]
  if method == "teacher_forcing":
    compile_teacher_forced(model, [(batch_size, length, a) for length, a in
                                   zip(lengths, answer_lens)], rope_theta=rope_theta)
  bar = common.progress(total=len(lengths) * len(depths) * trials, desc=desc,
                        enabled=show_progress)
  for li, (cells, max_answer) in enumerate(zip(grid_cells, answer_lens)):
    for i in range(0, len(cells), batch_size):
      batch = cells[i:i + batch_size]
      prompts = np.stack([ex["prompt"] for _, ex in batch])
      answers = np.stack([np.pad(ex["answer"], (0, max_answer - len(ex["answer"])))
                          for _, ex in batch])
      pad = batch_size - len(batch)  # keep one shape per length: one compile
      if pad:
        prompts = np.concatenate([prompts, np.repeat(prompts[:1], pad, 0)])
        answers = np.concatenate([answers, np.repeat(answers[:1], pad, 0)])
      if method == "generate":
        out = greedy_decode(model, prompts, max_answer, rope_theta=rope_theta)
      else:
        out = teacher_forced_argmax(model, prompts, answers, rope_theta=rope_theta)
      for (di, ex), got in zip(batch, out):
        want = ex["answer"]
        ok = bool(np.array_equal(got[:len(want)], want))
        correct[li, di] += ok
        predictions[li][di].append(tokenizer.decode(got[:len(want)]))
        numbers[li][di].append(ex["number"])
      bar.update(len(batch))
  bar.close()
  theta = model.config.rope_theta if rope_theta is None else rope_theta
  return dict(context_lengths=[int(x) for x in lengths], depths=[float(d) for d in depths],
              trials=int(trials), rope_theta=float(theta), method=method,
              accuracy=(correct / trials).tolist(), correct=correct.tolist(),
              predictions=predictions, numbers=numbers)


def file_stem(label: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "model"


ACCURACY_LABEL = "retrieval accuracy (exact match)"


def draw_heatmap(ax, grid: dict, *, tick_size=figures.TICK_FONT_SIZE,
                 cell_size=figures.CELL_FONT_SIZE):
  """One grid on `ax`: depth (rows, 0% at the top) x context length (columns), 0..1, each cell's
  accuracy written in white on dark cells and black on light ones."""
  acc = np.asarray(grid["accuracy"]).T  # [depth, length]
  im = ax.imshow(acc, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
  ax.set_xticks(range(acc.shape[1]), [str(x) for x in grid["context_lengths"]],
                fontsize=tick_size)
  ax.set_yticks(range(acc.shape[0]), [f"{100 * d:.0f}%" for d in grid["depths"]],
                fontsize=tick_size)
  figures.annotate_cells(ax, im, acc, fontsize=cell_size)
  return im


def _grid_size(grid):
  return figures.heatmap_size(len(grid["depths"]), len(grid["context_lengths"]))


def plot_heatmap(grid: dict, path: str, title: str):
  """Depth (rows, 0% at the top) x context length (columns), exact-match accuracy 0..1."""
  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=_grid_size(grid), layout="constrained")
  im = draw_heatmap(ax, grid)
  ax.set(xlabel="context length (tokens)", ylabel="needle depth",
         title=f"{title}\n{grid.get('trials', '?')} trials per cell")
  fig.colorbar(im, ax=ax, label=ACCURACY_LABEL)
  figures.savefig(fig, path)


def plot_heatmaps(results: list[dict], path: str):
  """Every model's grids (a needle_grid document's `results`) side by side, four a row."""
  plt = common.pyplot()
  grids = [(e["label"], g) for e in results for g in e["grids"]]
  rows, cols = -(-len(grids) // 4), min(4, len(grids))
  w, h = _grid_size(grids[0][1])
  fig, axes = plt.subplots(rows, cols, figsize=((w - 0.9) * cols + 1.0, h * rows),
                           squeeze=False, layout="constrained")
  im = None
  for ax, (label, g) in zip(axes.flat, grids):
    im = draw_heatmap(ax, g)
    ax.set_title(f"{label}, θ {g['rope_theta']:g}", fontsize=10)
    ax.set_xlabel("context length (tokens)")
  for ax in list(axes.flat)[len(grids):]:
    ax.axis("off")
  for row in axes:
    row[0].set_ylabel("needle depth")
  fig.colorbar(im, ax=axes.ravel().tolist(), label=ACCURACY_LABEL)
  figures.savefig(fig, path)


def markdown(results: list[dict], base_dir: str = "") -> str:
  """One table per model and theta: depth rows x length columns, plus the mean per length."""
  out = []
  for entry in results:
    for grid in entry["grids"]:
      lengths, depths = grid["context_lengths"], grid["depths"]
      acc = np.asarray(grid["accuracy"])
      out.append(f"**{entry['label']}**, RoPE θ {grid['rope_theta']:g} "
                 f"(×{grid['theta_scale']:g}), {grid['trials']} trials per cell, {grid['method']}")
      out.append("")
      out.append("| depth | " + " | ".join(f"T={t}" for t in lengths) + " |")
      out.append("|---|" + "---|" * len(lengths))
      for di, d in enumerate(depths):
        out.append(f"| {100 * d:.0f}% | " + " | ".join(f"{a:.2f}" for a in acc[:, di]) + " |")
      out.append("| mean | " + " | ".join(f"**{a:.2f}**" for a in acc.mean(1)) + " |")
      if grid.get("figure"):
        out.append("")
        out.append(f"![needle {entry['label']}]({os.path.join(base_dir, grid['figure'])})")
      out.append("")
  return "\n".join(out)
