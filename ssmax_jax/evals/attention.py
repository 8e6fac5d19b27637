"""Where the last prompt position looks (the paper's Fig. 7/8): the attention weight that the
query of the last prompt token gives to the needle number's tokens, per layer and head.

Only that one query row is computed per layer: q of the last position against every key, with
the model's own multiplier c (its variant, s and b) and RoPE; the residual stream itself goes
through the model's blocks (any backend), so no T x T matrix is formed here.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssmax_jax import ops
from ssmax_jax.evals import common, figures, needle
from ssmax_jax.nn.layers import rope


def _row_multiplier(logit_scale, q_B1NH, k_BSKH, query_positions_B1):
  """c [B,1,N] of the variant for the single query row (the module's own rule)."""
  mask = dict(is_causal=True, query_positions=query_positions_B1)
  kwargs = logit_scale.attention_kwargs(q_B1NH, k_BSKH, **mask)
  if "logit_multiplier" in kwargs:
    return kwargs["logit_multiplier"]
  N = q_B1NH.shape[2]
  if "s" not in kwargs:  # softmax
    return jnp.ones(q_B1NH.shape[:3], jnp.float32)
  n_B1 = ops.attention_counts(q_B1NH, k_BSKH, **mask)
  variant = "ssmax_bias" if "b" in kwargs else "ssmax"
  return ops.logit_multiplier(variant, n_B1, num_heads=N, **kwargs)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _last_row_probs(graphdef, state, tokens_BT, rope_theta):
  model = nnx.merge(graphdef, state)
  B, T = tokens_BT.shape
  x_BTD = model.embed[...].astype(model.config.dtype)[tokens_BT]
  positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  last_B1 = positions_BT[:, -1:]
  probs, delta_BTD = [], None  # a block's MLP output is added inside the next block's norm
  for i, block in enumerate(model.blocks):
    attn = block.attn
    N, K, H = attn.num_heads, attn.num_kv_heads, attn.head_dim
    h_BTD = block.attn_norm.add_norm(x_BTD, delta_BTD)[1]
    q_B1NH = rope(attn.q_proj(h_BTD[:, -1:]).reshape(B, 1, N, H), last_B1, rope_theta)
    k_BTKH = rope(attn.k_proj(h_BTD).reshape(B, T, K, H), positions_BT, rope_theta)
    c_BN = _row_multiplier(attn.logit_scale, q_B1NH, k_BTKH, last_B1)[:, 0]
    q_BKGH = q_B1NH[:, 0].reshape(B, K, N // K, H).astype(jnp.float32)
    logits_BKGT = jnp.einsum("bkgh,btkh->bkgt", q_BKGH, k_BTKH.astype(jnp.float32),
                             precision=jax.lax.Precision.HIGHEST)
    logits_BNT = logits_BKGT.reshape(B, N, T) * (H ** -0.5) * c_BN[..., None]
    probs.append(jax.nn.softmax(logits_BNT, axis=-1))  # every key 0..T-1 is attended
    if i + 1 < len(model.blocks):
      x_BTD, delta_BTD = block(x_BTD, delta_BTD, rope_theta=rope_theta)
  return jnp.stack(probs, axis=1)  # [B,L,N,T]


def last_query_probs(model, tokens_BT, *, rope_theta=None) -> jax.Array:
  """float32 [B,L,N,T]: attention probabilities of the last position over all T keys, per layer
  and head, with the model's variant (c), RoPE theta (default the model's) and GQA grouping."""
  theta = model.config.rope_theta if rope_theta is None else rope_theta
  graphdef, state = nnx.split(model)
  return _last_row_probs(graphdef, state, jnp.asarray(tokens_BT, jnp.int32), jnp.float32(theta))


def span_mass(probs_BLNT, spans_B2) -> np.ndarray:
  """[B,L,N]: probability summed over each row's token span [start, end)."""
  probs = np.asarray(probs_BLNT)
  T = probs.shape[-1]
  spans = np.asarray(spans_B2)
  inside_BT = (np.arange(T)[None] >= spans[:, :1]) & (np.arange(T)[None] < spans[:, 1:])
  return np.einsum("blnt,bt->bln", probs, inside_BT.astype(probs.dtype))


def needle_attention(model, tokenizer, tokens, length: int, *, trials: int = 100,
                     rope_theta=None, batch_size: int = 4, seed: int = 0,
                     show_progress: bool = True, desc: str = "") -> dict:
  """The weight the last prompt token gives to the needle number, per layer and head.

  Averaged over `trials` needle prompts of `length` tokens (random city, number, depth).

  Args:
    model: a `Transformer`.
    tokenizer: the model's tokenizer (`ssmax_jax.data.get_tokenizer`).
    tokens: the flat validation token stream the haystacks are cut from.
    length: T, the prompt length.
    trials: prompts averaged.
    rope_theta: RoPE's base; None is the model's.
    batch_size: prompts per forward pass.
    seed: draws the prompts.
    show_progress: a progress bar.
    desc: its label.

  Returns:
    A dict: context_length, trials, rope_theta, mean `[L][N]`, std `[L][N]`, top_heads (sorted
    by mean).
  """
  if trials < 1 or batch_size < 1:
    raise ValueError(f"trials={trials} and batch_size={batch_size} must be >= 1.")
  shortest = needle.min_context_length(tokenizer)
  if length < shortest:
    raise ValueError(f"context length {length} is too short for a needle example with "
                     f"tokenizer {tokenizer.name!r}: use at least {shortest}.")
  rng = np.random.default_rng([seed, length])
  examples = [needle.needle_trial(tokenizer, tokens, length, float(rng.uniform()), rng)
              for _ in range(trials)]
  masses = []
  for i in common.progress(range(0, trials, batch_size), desc=desc, enabled=show_progress):
    batch = examples[i:i + batch_size]
    prompts = np.stack([ex["prompt"] for ex in batch])
    spans = np.asarray([ex["needle_span"] for ex in batch])
    pad = batch_size - len(batch)
    if pad:
      prompts = np.concatenate([prompts, np.repeat(prompts[:1], pad, 0)])
      spans = np.concatenate([spans, np.repeat(spans[:1], pad, 0)])
    probs = last_query_probs(model, prompts, rope_theta=rope_theta)
    masses.append(span_mass(probs, spans)[:len(batch)])
  mass_BLN = np.concatenate(masses)
  mean, std = mass_BLN.mean(0), mass_BLN.std(0)
  order = np.argsort(-mean, axis=None)
  L, N = mean.shape
  top = [dict(layer=int(j // N), head=int(j % N), mean=float(mean.flat[j]),
              std=float(std.flat[j])) for j in order]
  theta = model.config.rope_theta if rope_theta is None else rope_theta
  return dict(context_length=int(length), trials=int(trials), rope_theta=float(theta),
              mean=mean.tolist(), std=std.tolist(), top_heads=top,
              depths=[float(ex["depth"]) for ex in examples],
              needle_tokens=[int(ex["needle_span"][1] - ex["needle_span"][0]) for ex in examples])


def plot(results: list[dict], path: str, top_k: int = 10):
  """Top: the top_k heads of each model (bars, mean +- std over the prompts). Bottom: mean weight
  per layer x head. Both scales fit the largest value of any model (shared across models)."""
  plt = common.pyplot()
  M = len(results)
  L, N = np.asarray(results[0]["result"]["mean"]).shape
  w, h = figures.heatmap_size(L, N)
  fig, axes = plt.subplots(2, M, figsize=(max(5.5, w) * M, 4.0 + h), squeeze=False,
                           layout="constrained", gridspec_kw=dict(height_ratios=(4.0, h)))
  bar_top = max(max((t["mean"] + t["std"] for t in e["result"]["top_heads"][:top_k]),
                    default=0.0) for e in results)
  map_top = max(float(np.max(e["result"]["mean"])) for e in results)
  for m, entry in enumerate(results):
    res = entry["result"]
    top = res["top_heads"][:top_k]
    ax = axes[0, m]
    ax.bar(range(len(top)), [t["mean"] for t in top], yerr=[t["std"] for t in top], capsize=2,
           color="C0", ecolor="0.2")
    ax.set_xticks(range(len(top)), [f"L{t['layer']}H{t['head']}" for t in top], rotation=60,
                  fontsize=figures.CELL_FONT_SIZE)
    ax.set_ylim(0, 1.08 * bar_top if bar_top > 0 else 1.0)
    ax.grid(axis="y", alpha=0.25)
    ax.set(xlabel="head (layer, head)",
           ylabel=f"attention weight on the needle\n(mean ± std, {res['trials']} prompts)",
           title=f"{entry['label']}: top {len(top)} heads (T={res['context_length']})")
    mean = np.asarray(res["mean"])
    im = axes[1, m].imshow(mean, vmin=0, vmax=map_top or 1.0, cmap="viridis", aspect="auto")
    figures.annotate_cells(axes[1, m], im, mean)
    axes[1, m].set_xticks(range(mean.shape[1]))
    axes[1, m].set_yticks(range(mean.shape[0]))
    axes[1, m].set(xlabel="head", ylabel="layer", title="mean weight on the needle number")
    fig.colorbar(im, ax=axes[1, m], label="attention weight")
  figures.savefig(fig, path)


def markdown(results: list[dict], top_k: int = 10) -> str:
  """The top_k heads of each model, and its largest and summed weights."""
  lines = ["| model | T | θ | trials | top heads (layer.head: mean weight) | max | sum over heads, mean per layer |",
           "|---|---|---|---|---|---|---|"]
  for entry in results:
    res = entry["result"]
    mean = np.asarray(res["mean"])
    tops = ", ".join(f"{h['layer']}.{h['head']}: {h['mean']:.3f}" for h in res["top_heads"][:top_k])
    lines.append(f"| {entry['label']} | {res['context_length']} | {res['rope_theta']:g} | "
                 f"{res['trials']} | {tops} | {mean.max():.3f} | {mean.sum(1).mean():.3f} |")
  return "\n".join(lines) + "\n"
