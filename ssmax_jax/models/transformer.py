"""The paper's decoder-only transformer (Table 1): pre-norm RMSNorm, RoPE, SwiGLU, untied."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import ArrayLike, DTypeLike

from ssmax_jax import ops
from ssmax_jax.nn import Dense, RMSNorm, SSMaxAttention, shard
from ssmax_jax.nn._signature import init_signature
from ssmax_jax.nn.layers import param

REMAT_POLICIES = ("none", "block", "dots")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """The model's shape and attention; defaults are the paper's Table 1 model.

  That is 162.1M parameters with attention 'ssmax'. Checked when created (ValueError for an
  unknown variant or implementation, heads that do not divide, sizes below 1).

  Attributes:
    vocab_size: V, the tokenizer's vocabulary (GPT-2's by default).
    d_model: D, the residual stream's width.
    num_layers: L, the number of blocks.
    num_heads: N, query heads per layer; must divide d_model (H = D // N).
    num_kv_heads: K, key/value heads (GQA); None is N. Must divide N.
    d_ff: F, the SwiGLU hidden width.
    rope_theta: RoPE's base (a call or `generate` may override it).
    attention: the variant, a name in `ssmax_jax.VARIANTS`.
    l_train: the training length: the default s_init and qwen_logn's L_train.
    s_init: the initial s; None is 1 / mean(log n, n = 1..l_train).
    b_init: the initial b (ssmax_bias).
    fixed_s: ssmax_fixed's constant s.
    floor_scale: llama4_temperature's floor scale.
    attn_scale: llama4_temperature's attention scale.
    vocab_pad_multiple: pads the embedding and lm_head rows to a multiple of this (e.g. 64
      pads 50257 to 50304 for faster matmuls); logits are cut back to vocab_size.
    dtype: the compute dtype.
    param_dtype: the dtype parameters are stored in.
    norm_eps: RMSNorm's epsilon.
    remat: deprecated alias of remat_policy: True is 'block' (removed in the next release).
    remat_policy: the backward's rematerialisation, one of REMAT_POLICIES: 'none' keeps every
      activation, 'block' recomputes each block, 'dots' keeps the blocks' matmul outputs and
      recomputes the rest (norms, RoPE, activations).
    implementation: the attention backend (`ssmax_jax.dot_product_attention`); None picks one
      per platform.
    norm_implementation: the residual add + RMSNorm: None (alias 'auto': a Pallas kernel on a
      GPU where it applies, XLA elsewhere), 'xla' or 'pallas' (ssmax_jax/ops/rms_norm).
  """
  vocab_size: int = 50257
  d_model: int = 768
  num_layers: int = 12
  num_heads: int = 12
  num_kv_heads: int | None = None
  d_ff: int = 2048
  rope_theta: float = 10000.0
  attention: str = "ssmax"
  l_train: int = 1024
  s_init: float | None = None
  b_init: float = 0.0
  fixed_s: float = 1.0
  floor_scale: float = 8192.0
  attn_scale: float = 0.1
  vocab_pad_multiple: int = 1
  dtype: str = "bfloat16"
  param_dtype: str = "float32"
  norm_eps: float = 1e-6
  remat: bool = False
  remat_policy: str = "none"
  implementation: str | None = None
  norm_implementation: str | None = None

  def __post_init__(self):
    ops.check_variant(self.attention)
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy={self.remat_policy!r}; choose one of {REMAT_POLICIES}.")
    if self.remat and self.remat_policy not in ("none", "block"):
      raise ValueError(f"remat=True (deprecated: remat_policy='block') contradicts "
                       f"remat_policy={self.remat_policy!r}: drop remat.")
    ops.check_norm_implementation(self.norm_implementation)
    if self.d_model % self.num_heads:
      raise ValueError(f"num_heads={self.num_heads} must divide d_model={self.d_model}.")
    kv = self.num_kv_heads or self.num_heads
    if self.num_heads % kv:
      raise ValueError(f"num_kv_heads={kv} must divide num_heads={self.num_heads}.")
    for name in ("vocab_size", "d_model", "num_layers", "d_ff", "l_train", "vocab_pad_multiple"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")

  @property
  def remat_mode(self) -> str:
    """remat_policy with the deprecated remat=True read as 'block'."""
    return "block" if self.remat else self.remat_policy

  @property
  def padded_vocab_size(self) -> int:
    """vocab_size rounded up to a multiple of vocab_pad_multiple (the embedding's rows)."""
    m = self.vocab_pad_multiple
    return -(-self.vocab_size // m) * m


class MLP(nnx.Module):
  """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

  def __init__(self, d_model, d_ff, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate = Dense(d_model, d_ff, ("embed", "mlp"), **kw)
    self.up = Dense(d_model, d_ff, ("embed", "mlp"), **kw)
    self.down = Dense(d_ff, d_model, ("mlp", "embed"), **kw)

  def __call__(self, x_BTD):
    h_BTF = shard(jax.nn.silu(self.gate(x_BTD)) * self.up(x_BTD), ("act_batch", "act_seq", "act_mlp"))
    return self.down(h_BTF)


class Block(nnx.Module):
  def __init__(self, cfg: TransformerConfig, *, rngs):
    dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    norm = dict(eps=cfg.norm_eps, dtype=dt, param_dtype=pdt, rngs=rngs,
                implementation=cfg.norm_implementation)
    self.attn_norm = RMSNorm(cfg.d_model, **norm)
    self.attn = SSMaxAttention(
        cfg.d_model, cfg.num_heads, num_kv_heads=cfg.num_kv_heads, variant=cfg.attention,
        l_train=cfg.l_train, rope_theta=cfg.rope_theta, s_init=cfg.s_init, b_init=cfg.b_init,
        fixed_s=cfg.fixed_s, floor_scale=cfg.floor_scale, attn_scale=cfg.attn_scale,
        implementation=cfg.implementation, dtype=dt, param_dtype=pdt, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, **norm)
    self.mlp = MLP(cfg.d_model, cfg.d_ff, dtype=dt, param_dtype=pdt, rngs=rngs)

  def __call__(self, x_BTD, delta_BTD=None, **attn_kwargs):
    """Residual stream x plus the previous block's pending branch output delta (None in the
    first block) -> (residual stream, this block's pending MLP output). Each residual add
    happens inside the norm that follows it (one kernel each way with the Pallas norm)."""
    x_BTD, h_BTD = self.attn_norm.add_norm(x_BTD, delta_BTD)
    x_BTD, h_BTD = self.mlp_norm.add_norm(x_BTD, self.attn(h_BTD, **attn_kwargs))
    return shard(x_BTD, ("act_batch", "act_seq", "act_embed")), self.mlp(h_BTD)


@init_signature
class Transformer(nnx.Module):
  """The paper's decoder-only transformer: tokens [B,T] int -> logits [B,T,V] float32.

  Embedding, `config.num_layers` pre-norm blocks (RMSNorm, `SSMaxAttention`, RMSNorm,
  SwiGLU), a final RMSNorm and an untied lm_head. `hidden` and `logits` are exposed separately
  so that a trainer can compute the loss over the vocabulary in chunks without materialising
  all logits. `generate` decodes with a KV cache.
  """

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    """Creates the parameters.

    Args:
      config: the model's shape and attention.
      rngs: the random streams; the weights draw from `rngs.params()`.
    """
    self.config = config
    dt, pdt = jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
    V, D = config.padded_vocab_size, config.d_model
    self.embed = param(rngs, nnx.initializers.normal(stddev=1.0), (V, D), ("vocab", "embed"), pdt)
    self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.num_layers)])
    self.final_norm = RMSNorm(D, eps=config.norm_eps, dtype=dt, param_dtype=pdt, rngs=rngs,
                              implementation=config.norm_implementation)
    self.lm_head = Dense(D, V, ("embed", "vocab"), dtype=dt, param_dtype=pdt, rngs=rngs,
                         init=nnx.initializers.normal(stddev=D ** -0.5))

  def hidden(self, tokens_BT: jax.Array, *, positions_BT: jax.Array | None = None,
             segment_ids_BT: jax.Array | None = None, rope_theta: ArrayLike | None = None,
             decode: bool = False) -> jax.Array:
    """The final norm's hidden states, before lm_head.

    Args:
      tokens_BT: [B,T] int token ids.
      positions_BT: [B,T] int RoPE positions (default 0..T-1; packed documents restart them).
      segment_ids_BT: [B,T] int document ids: attention stays within each document.
      rope_theta: RoPE's base for this call; None is config.rope_theta.
      decode: run against the KV cache (`init_cache` first), as `SSMaxAttention` does.

    Returns:
      [B,T,D] in the compute dtype.
    """
    # Gather, then cast: the backward scatter-adds into the table in its own dtype. Real text
    # repeats a few tokens thousands of times per batch: a bf16 sum of that many terms drops the
    # small ones, and contended bf16 atomics are slow (H200, 128 x 1024 tokens of Python: 395 ms
    # in bf16, 0.5 ms in float32; benchmarks/bench_embedding.py).
    x_BTD = self.embed[...][tokens_BT].astype(self.config.dtype)
    x_BTD = shard(x_BTD, ("act_batch", "act_seq", "act_embed"))
    kwargs = dict(positions_BT=positions_BT, segment_ids_BT=segment_ids_BT,
                  rope_theta=rope_theta, decode=decode)
    delta_BTD = None
    mode = self.config.remat_mode
    for block in self.blocks:
      if mode != "none" and not decode:
        policy = None if mode == "block" else (
            jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
        x_BTD, delta_BTD = nnx.remat(lambda blk, x, d: blk(x, d, **kwargs), policy=policy)(
            block, x_BTD, delta_BTD)
      else:
        x_BTD, delta_BTD = block(x_BTD, delta_BTD, **kwargs)
    return self.final_norm.add_norm(x_BTD, delta_BTD)[1]

  def logits(self, h_BTD: jax.Array) -> jax.Array:
    """lm_head of hidden states [..., D]: float32 [..., V] over the real vocabulary (padding
    columns cut off)."""
    logits_BTV = self.lm_head(h_BTD).astype(jnp.float32)
    return logits_BTV[..., : self.config.vocab_size]

  def __call__(self, tokens_BT: jax.Array, **kwargs) -> jax.Array:
    """Logits float32 [B,T,V] of tokens [B,T]; keyword arguments as in `hidden`."""
    return self.logits(self.hidden(tokens_BT, **kwargs))

  def attention_layers(self) -> list[SSMaxAttention]:
    """Each block's attention module, first block first."""
    return [block.attn for block in self.blocks]

  def set_variant(self, variant: str, *, s_init: float | None = None) -> None:
    """Switches every layer's attention variant (see `LogitScale.set_variant`).

    Args:
      variant: a name in `ssmax_jax.VARIANTS`; config.attention is updated to it.
      s_init: the initial s for layers that gain one; None is `default_s_init(l_train)`.
    """
    for attn in self.attention_layers():
      attn.logit_scale.set_variant(variant, s_init=s_init)
    self.config = dataclasses.replace(self.config, attention=variant)

  def init_cache(self, batch_size: int, max_len: int, dtype: DTypeLike | None = None) -> None:
    """Allocates every layer's KV cache for `decode=True` calls (`generate` does this).

    Args:
      batch_size: B of the decoding calls.
      max_len: the most positions the cache holds (prompt plus generated tokens).
      dtype: the cache's dtype; None is config.dtype.
    """
    for attn in self.attention_layers():
      attn.init_cache(batch_size, max_len, jnp.dtype(dtype or self.config.dtype))

  def set_cache_lengths(self, lengths_B: ArrayLike) -> None:
    """Sets each row's cache positions in use in every layer (`SSMaxAttention.set_cache_lengths`):
    after a prefill of right-padded prompts, row b continues at position lengths_B[b]."""
    for attn in self.attention_layers():
      attn.set_cache_lengths(lengths_B)


def count_params(model: nnx.Module) -> int:
  """The number of scalars in the model's nnx.Param variables (162.1M for the default config)."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def filter_logits(logits_BV: jax.Array, *, top_k: int | None = None,
                  top_p: ArrayLike | None = None) -> jax.Array:
  """Top-k, then top-p (nucleus) filtering: the logits outside both become -inf.

  Args:
    logits_BV: [B,V] float logits (already divided by the temperature).
    top_k: keep each row's top_k largest logits (ties go to the lower id); None keeps all.
    top_p: of those, keep the fewest largest whose probabilities (softmax over the kept
      logits) sum to at least top_p; the largest always stays. None keeps them all.

  Returns:
    [B,V] like logits_BV: kept logits unchanged, the others -inf.
  """
  B, V = logits_BV.shape
  vals_BK, ids_BK = jax.lax.top_k(logits_BV, V if top_k is None else top_k)  # descending
  if top_p is not None:
    probs_BK = jax.nn.softmax(vals_BK, axis=-1)
    # A token stays if the tokens above it have not yet reached top_p.
    mass_above_BK = jnp.cumsum(probs_BK, axis=-1) - probs_BK
    vals_BK = jnp.where(mass_above_BK < top_p, vals_BK, -jnp.inf)
  rows_B1 = jnp.arange(B)[:, None]
  return jnp.full_like(logits_BV, -jnp.inf).at[rows_B1, ids_BK].set(vals_BK)


@dataclasses.dataclass(frozen=True)
class _Sampling:
  """The options that change the decoding program (static under jit)."""
  greedy: bool
  top_k: int | None
  uses_top_p: bool
  stops: bool  # an eos_id was given


def _pick(logits_BV, key, temperature, top_p, opts: _Sampling):
  """The next token [B] int32 of each row."""
  if opts.greedy:
    return jnp.argmax(logits_BV, -1).astype(jnp.int32)
  logits_BV = logits_BV / temperature
  if opts.top_k is not None or opts.uses_top_p:
    logits_BV = filter_logits(logits_BV, top_k=opts.top_k,
                              top_p=top_p if opts.uses_top_p else None)
  return jax.random.categorical(key, logits_BV).astype(jnp.int32)


def _stop(token_B, done_B, eos_id, opts: _Sampling):
  """Rows that emitted eos keep emitting it: (tokens, rows done after these tokens)."""
  if not opts.stops:
    return token_B, done_B
  token_B = jnp.where(done_B, eos_id, token_B)
  return token_B, done_B | (token_B == eos_id)


def _new_lengths(new_BA, done_B, eos_id):
  """Generated tokens per row up to and including its first eos (A if none)."""
  first_B = jnp.argmax(new_BA == eos_id, axis=1).astype(jnp.int32) + 1
  return jnp.where(done_B, first_B, new_BA.shape[1])


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "opts"))
def _decode(graphdef, state, prompt_BT, lengths_B, key, rope_theta, temperature, top_p,
            eos_id, max_new_tokens, opts):
  B, T = prompt_BT.shape
  pick = lambda logits_BV, i: _pick(logits_BV, jax.random.fold_in(key, T + i), temperature,
                                    top_p, opts)
  model = nnx.merge(graphdef, state)
  # Logits of each row's last prompt position only: [B,T,V] float32 would be 16 GB at B=4,
  # T=20k, GPT-2. Right padding needs no mask: a real token never attends a later position.
  h_BTD = model.hidden(prompt_BT, decode=True, rope_theta=rope_theta)
  model.set_cache_lengths(lengths_B)
  last_BD = h_BTD[jnp.arange(B), lengths_B - 1]
  token_B, done_B = _stop(pick(model.logits(last_BD), 0), jnp.zeros(B, bool), eos_id, opts)
  # Filled with eos so that the positions left when every row has stopped already hold it.
  fill = eos_id if opts.stops else 0
  new_BA = jnp.full((B, max_new_tokens), fill, jnp.int32).at[:, 0].set(token_B)

  def step(carry):
    i, new_BA, done_B, state = carry
    m = nnx.merge(graphdef, state)
    last_B1 = jax.lax.dynamic_slice_in_dim(new_BA, i - 1, 1, axis=1)
    logits_B1V = m(last_B1, decode=True, rope_theta=rope_theta)
    token_B, done_B = _stop(pick(logits_B1V[:, 0], i), done_B, eos_id, opts)
    new_BA = jax.lax.dynamic_update_slice_in_dim(new_BA, token_B[:, None], i, axis=1)
    return i + 1, new_BA, done_B, nnx.state(m)

  # A while loop rather than fori_loop: it ends early once every row has emitted eos.
  keep_going = lambda carry: (carry[0] < max_new_tokens) & ~jnp.all(carry[2])
  _, new_BA, done_B, _ = jax.lax.while_loop(
      keep_going, step, (jnp.int32(1), new_BA, done_B, nnx.state(model)))
  return jnp.concatenate([prompt_BT, new_BA], axis=1), _new_lengths(new_BA, done_B, eos_id)


def generate(model: Transformer, prompts_BT: ArrayLike, max_new_tokens: int, *,
             prompt_lengths: ArrayLike | None = None, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
             seed: int = 0, rope_theta: float | None = None,
             return_lengths: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Decodes with the KV cache, continuing every prompt by up to max_new_tokens tokens.

  The prompts are processed in one call, then one token per step under a lax.while_loop;
  compiled once per shape and set of sampling options (greedy or not, top_k, whether top_p
  and eos_id are given) and reused across calls, also for other temperatures, top_p values,
  eos ids, seeds and prompt lengths. The cache is dropped afterwards.

  Prompts of different lengths are right-padded into prompts_BT with their lengths in
  prompt_lengths: row b continues from position prompt_lengths[b] (its RoPE positions and
  SSMax's n are its own), so each row decodes as it would alone. The pad ids are never
  attended; any id will do.

  Args:
    model: the model to decode with.
    prompts_BT: [B,T] int token ids, right-padded where prompt_lengths is given.
    max_new_tokens: A, the number of tokens to generate, >= 1.
    prompt_lengths: [B] ints in 1..T, each row's prompt length; None is T for every row.
    temperature: 0 is greedy decoding; above 0, tokens are drawn from
      softmax(logits / temperature) (small models loop under greedy decoding).
    top_k: sample from the top_k most likely tokens only (1..V); needs temperature > 0.
    top_p: nucleus sampling: from the fewest most likely tokens whose probability (after
      top_k, at the temperature) sums to at least top_p, in (0, 1]; needs temperature > 0.
    eos_id: end of sequence: a row that emits it stops, and its later positions hold eos_id
      (decoding ends early once every row has stopped). None generates A tokens per row.
    seed: the sampling seed (temperature > 0).
    rope_theta: RoPE's base while decoding; None is model.config.rope_theta.
    return_lengths: also return the number of tokens each row generated.

  Returns:
    int32 [B, T + A]: prompts_BT as given, then each row's generated tokens (row b's text is
    prompts_BT[b, :prompt_lengths[b]] followed by out[b, T:]). With return_lengths, a pair
    (that array, new_lengths int32 [B]): row b generated out[b, T:T + new_lengths[b]], which
    ends with eos_id if the row stopped (new_lengths is A for rows that did not).

  Raises:
    ValueError: for an argument out of range (before any compute).
  """
  prompts_BT = np.asarray(prompts_BT)
  lengths_B = _check_generate_args(model.config.vocab_size, prompts_BT, max_new_tokens,
                                   prompt_lengths, temperature, top_k, top_p, eos_id)
  B, T = prompts_BT.shape
  opts = _Sampling(greedy=temperature == 0, top_k=top_k,
                   uses_top_p=top_p is not None and top_p < 1, stops=eos_id is not None)
  model.init_cache(B, T + max_new_tokens)
  theta = model.config.rope_theta if rope_theta is None else rope_theta
  graphdef, state = nnx.split(model)
  try:
    tokens_BL, new_lengths_B = _decode(
        graphdef, state, jnp.asarray(prompts_BT, jnp.int32), jnp.asarray(lengths_B),
        jax.random.key(seed), jnp.float32(theta), jnp.float32(temperature),
        jnp.float32(1.0 if top_p is None else top_p),
        jnp.int32(-1 if eos_id is None else eos_id), max_new_tokens, opts)
  finally:  # decoding state is not kept after generation
    for attn in model.attention_layers():
      attn.cache_k = attn.cache_v = attn.cache_index = None
  return (tokens_BL, new_lengths_B) if return_lengths else tokens_BL


def _check_generate_args(vocab_size, prompts_BT, max_new_tokens, prompt_lengths, temperature,
                         top_k, top_p, eos_id) -> np.ndarray:
  """Raises ValueError naming the argument and the fix; returns the prompt lengths [B] int32."""
  if prompts_BT.ndim != 2 or prompts_BT.shape[1] < 1:
    raise ValueError(f"prompts_BT has shape {prompts_BT.shape}; expected [B,T] token ids with "
                     "T >= 1.")
  B, T = prompts_BT.shape
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1.")
  if not temperature >= 0:
    raise ValueError(f"temperature={temperature} must be >= 0 (0 is greedy decoding).")
  for name, value in (("top_k", top_k), ("top_p", top_p)):
    if value is not None and temperature == 0:
      raise ValueError(f"{name}={value} only applies when sampling: pass temperature > 0, "
                       f"or drop {name} for greedy decoding.")
  if top_k is not None and not 1 <= top_k <= vocab_size:
    raise ValueError(f"top_k={top_k} must be in 1..vocab_size={vocab_size} (None keeps all).")
  if top_p is not None and not 0 < top_p <= 1:
    raise ValueError(f"top_p={top_p} must be in (0, 1] (None or 1 keeps all).")
  if eos_id is not None and not 0 <= eos_id < vocab_size:
    raise ValueError(f"eos_id={eos_id} is not a token id: pass one in 0..{vocab_size - 1}.")
  lengths_B = np.full(B, T) if prompt_lengths is None else np.asarray(prompt_lengths)
  if lengths_B.shape != (B,) or not np.issubdtype(lengths_B.dtype, np.integer):
    raise ValueError(f"prompt_lengths has shape {lengths_B.shape} and dtype {lengths_B.dtype};"
                     f" expected [B]=[{B}] ints, one per row of prompts_BT.")
  if not ((lengths_B >= 1) & (lengths_B <= T)).all():
    raise ValueError(f"prompt_lengths={lengths_B.tolist()} must be in 1..T={T} (the prompts' "
                     "padded length).")
  real_BT = np.arange(T) < lengths_B[:, None]
  if not (((prompts_BT >= 0) & (prompts_BT < vocab_size)) | ~real_BT).all():
    raise ValueError(f"prompts_BT holds ids outside 0..{vocab_size - 1} within the prompt "
                     "lengths: pass the model's token ids.")
  return lengths_B.astype(np.int32)
