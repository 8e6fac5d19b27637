"""The paper's decoder-only transformer (Table 1): pre-norm RMSNorm, RoPE, SwiGLU, untied."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike, DTypeLike

from ssmax_jax import ops
from ssmax_jax.nn import Dense, RMSNorm, SSMaxAttention, shard
from ssmax_jax.nn._signature import init_signature
from ssmax_jax.nn.layers import param


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
    remat: rematerialise each block in the backward (less memory, more compute).
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
  implementation: str | None = None
  norm_implementation: str | None = None

  def __post_init__(self):
    ops.check_variant(self.attention)
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
    for block in self.blocks:
      if self.config.remat and not decode:
        x_BTD, delta_BTD = nnx.remat(lambda blk, x, d: blk(x, d, **kwargs))(block, x_BTD,
                                                                            delta_BTD)
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


def count_params(model: nnx.Module) -> int:
  """The number of scalars in the model's nnx.Param variables (162.1M for the default config)."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature"))
def _decode(graphdef, state, prompt_BT, key, rope_theta, max_new_tokens, temperature):
  B, T = prompt_BT.shape

  def pick(logits_BV, i):
    if temperature == 0:
      return jnp.argmax(logits_BV, -1).astype(jnp.int32)
    draw = jax.random.categorical(jax.random.fold_in(key, i), logits_BV / temperature)
    return draw.astype(jnp.int32)

  model = nnx.merge(graphdef, state)
  # Logits of the last prompt position only: [B,T,V] float32 would be 16 GB at B=4, T=20k, GPT-2.
  h_BTD = model.hidden(prompt_BT, decode=True, rope_theta=rope_theta)
  new_BA = jnp.zeros((B, max_new_tokens), jnp.int32).at[:, 0].set(
      pick(model.logits(h_BTD[:, -1]), T))

  def step(i, carry):
    new_BA, state = carry
    m = nnx.merge(graphdef, state)
    last_B1 = jax.lax.dynamic_slice_in_dim(new_BA, i - 1, 1, axis=1)
    logits_B1V = m(last_B1, decode=True, rope_theta=rope_theta)
    new_BA = jax.lax.dynamic_update_slice_in_dim(
        new_BA, pick(logits_B1V[:, 0], T + i)[:, None], i, axis=1)
    return new_BA, nnx.state(m)

  new_BA, _ = jax.lax.fori_loop(1, max_new_tokens, step, (new_BA, nnx.state(model)))
  return jnp.concatenate([prompt_BT, new_BA], axis=1)


def generate(model: Transformer, prompt_BT: ArrayLike, max_new_tokens: int, *,
             temperature: float = 0.0, seed: int = 0,
             rope_theta: float | None = None) -> jax.Array:
  """Decodes with the KV cache, continuing every prompt by max_new_tokens tokens.

  The prompt is processed in one call, then one token per step under lax.fori_loop; compiled
  once per shape and reused across calls. The cache is dropped afterwards.

  Args:
    model: the model to decode with.
    prompt_BT: [B,T] int token ids.
    max_new_tokens: A, the number of tokens to generate, >= 1.
    temperature: 0 is greedy decoding; above 0, tokens are drawn from
      softmax(logits / temperature) (small models loop under greedy decoding).
    seed: the sampling seed (temperature > 0).
    rope_theta: RoPE's base while decoding; None is model.config.rope_theta.

  Returns:
    int32 [B, T + A]: the prompt followed by the generated tokens.
  """
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1.")
  B, T = prompt_BT.shape
  model.init_cache(B, T + max_new_tokens)
  theta = model.config.rope_theta if rope_theta is None else rope_theta
  graphdef, state = nnx.split(model)
  try:
    return _decode(graphdef, state, jnp.asarray(prompt_BT, jnp.int32), jax.random.key(seed),
                   jnp.float32(theta), max_new_tokens, float(temperature))
  finally:  # decoding state is not kept after generation
    for attn in model.attention_layers():
      attn.cache_k = attn.cache_v = attn.cache_index = None
