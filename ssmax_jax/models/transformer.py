"""The paper's decoder-only transformer (Table 1): pre-norm RMSNorm, RoPE, SwiGLU, untied."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from ssmax_jax import ops
from ssmax_jax.nn import Dense, RMSNorm, SSMaxAttention, shard
from ssmax_jax.nn.layers import param


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Defaults are the paper's Table 1 model: 162.1M parameters with attention 'ssmax'."""
  vocab_size: int = 50257
  d_model: int = 768
  num_layers: int = 12
  num_heads: int = 12
  num_kv_heads: int | None = None  # None: as many as num_heads (no GQA)
  d_ff: int = 2048
  rope_theta: float = 10000.0
  attention: str = "ssmax"  # any name in ssmax_jax.VARIANTS
  l_train: int = 1024  # training length: s initialisation and qwen_logn
  s_init: float | None = None  # None: 1 / mean(log n, n = 1..l_train)
  b_init: float = 0.0
  fixed_s: float = 1.0  # ssmax_fixed
  floor_scale: float = 8192.0  # llama4_temperature
  attn_scale: float = 0.1  # llama4_temperature
  vocab_pad_multiple: int = 1  # e.g. 64 pads 50257 to 50304 for faster matmuls; logits are cut back
  dtype: str = "bfloat16"  # compute
  param_dtype: str = "float32"
  norm_eps: float = 1e-6
  remat: bool = False  # rematerialise each block in the backward (less memory, more compute)
  implementation: str | None = None  # attention backend; None picks per platform
  # Residual add + RMSNorm: None (alias 'auto': a Pallas kernel on a GPU where it applies, XLA
  # elsewhere), 'xla' or 'pallas' (ssmax_jax/ops/rms_norm).
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


class Transformer(nnx.Module):
  """tokens [B,T] int -> logits [B,T,vocab_size] float32.

  `hidden` and `logits` are exposed separately so that a trainer can compute the loss over
  the vocabulary in chunks without materialising all logits.
  """

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = config
    dt, pdt = jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
    V, D = config.padded_vocab_size, config.d_model
    self.embed = param(rngs, nnx.initializers.normal(stddev=1.0), (V, D), ("vocab", "embed"), pdt)
    self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.num_layers)])
    self.final_norm = RMSNorm(D, eps=config.norm_eps, dtype=dt, param_dtype=pdt, rngs=rngs,
                              implementation=config.norm_implementation)
    self.lm_head = Dense(D, V, ("embed", "vocab"), dtype=dt, param_dtype=pdt, rngs=rngs,
                         init=nnx.initializers.normal(stddev=D ** -0.5))

  def hidden(self, tokens_BT, *, positions_BT=None, segment_ids_BT=None, rope_theta=None,
             decode=False):
    """Final-norm hidden states [B,T,D] in the compute dtype."""
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

  def logits(self, h_BTD):
    """float32 logits over the real vocabulary (padding columns cut off)."""
    logits_BTV = self.lm_head(h_BTD).astype(jnp.float32)
    return logits_BTV[..., : self.config.vocab_size]

  def __call__(self, tokens_BT, **kwargs):
    return self.logits(self.hidden(tokens_BT, **kwargs))

  def attention_layers(self):
    return [block.attn for block in self.blocks]

  def set_variant(self, variant, *, s_init=None):
    """Switches every layer's attention variant (see LogitScale.set_variant)."""
    for attn in self.attention_layers():
      attn.logit_scale.set_variant(variant, s_init=s_init)
    self.config = dataclasses.replace(self.config, attention=variant)

  def init_cache(self, batch_size, max_len, dtype=None):
    for attn in self.attention_layers():
      attn.init_cache(batch_size, max_len, jnp.dtype(dtype or self.config.dtype))


def count_params(model: nnx.Module) -> int:
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


def generate(model: Transformer, prompt_BT, max_new_tokens: int, *, temperature=0.0, seed=0,
             rope_theta=None):
  """Decodes with the KV cache: returns [B, T + max_new_tokens] tokens.

  temperature 0 is greedy decoding; above 0, tokens are drawn from softmax(logits / temperature)
  (small models loop under greedy decoding). The prompt is processed in one call, then one token
  per step under lax.fori_loop; compiled once per shape and reused across calls.
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
