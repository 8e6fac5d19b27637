"""SSMax attention as Flax modules: a full attention layer and attention_fn drop-ins."""
import functools

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from flax.linen import module as linen_module
from jax.typing import ArrayLike, DTypeLike

from ssmax_jax import ops
from ssmax_jax.nn import _dropin
from ssmax_jax.nn._signature import init_signature
from ssmax_jax.nn.layers import Dense, rope, rope_cos_sin
from ssmax_jax.nn.partitioning import activation_spec, shard


@init_signature
class LogitScale(nnx.Module):
  """A variant's multiplier c = f(n) and its learned parameters (s, and b for ssmax_bias).

  The attention modules hold one each; `attention_kwargs` turns it into the arguments of
  `ssmax_jax.dot_product_attention`. Parameters: `s` [N] (ssmax, ssmax_bias) and `b` [N]
  (ssmax_bias), float32, None where the variant does not learn them.
  """

  def __init__(self, num_heads: int, variant: str = "ssmax", *, l_train: int = 1024,
               s_init: float | None = None, b_init: float = 0.0, fixed_s: float = 1.0,
               floor_scale: float = 8192.0, attn_scale: float = 0.1):
    """Creates the variant's parameters.

    Args:
      num_heads: N, the number of query heads (one s and b each).
      variant: a name in `ssmax_jax.VARIANTS`.
      l_train: the training length: the default s_init and qwen_logn's L_train.
      s_init: the initial s; None is `ssmax_jax.default_s_init(l_train)`.
      b_init: the initial b (ssmax_bias).
      fixed_s: ssmax_fixed's constant s.
      floor_scale: llama4_temperature's floor scale.
      attn_scale: llama4_temperature's attention scale.
    """
    self.num_heads = num_heads
    self.l_train = l_train
    self.fixed_s = fixed_s
    self.floor_scale = floor_scale
    self.attn_scale = attn_scale
    self.s = nnx.data(None)  # data, not static: set_variant may fill them later
    self.b = nnx.data(None)
    self.set_variant(variant, s_init=s_init, b_init=b_init)

  def set_variant(self, variant: str, *, s_init: float | None = None,
                  b_init: float = 0.0) -> None:
    """Switches the variant, adding s (and b) when it learns them and keeping existing ones.

    This is how softmax pretraining moves to SSMax (the paper's variants (e) and (f)) and how an
    inference-only variant (qwen_logn, llama4_temperature) is evaluated on a softmax model.

    Args:
      variant: a name in `ssmax_jax.VARIANTS`.
      s_init: the initial s if s is created now; None is `default_s_init(l_train)`.
      b_init: the initial b if b is created now.
    """
    ops.check_variant(variant)
    self.variant = variant
    if variant in ops.LEARNED_VARIANTS and self.s is None:
      s0 = ops.default_s_init(self.l_train) if s_init is None else s_init
      self.s = nnx.Param(jnp.full((self.num_heads,), s0, jnp.float32),
                         out_sharding=("head_scalars",), eager_sharding=False)
    if variant == "ssmax_bias" and self.b is None:
      self.b = nnx.Param(jnp.full((self.num_heads,), b_init, jnp.float32),
                         out_sharding=("head_scalars",), eager_sharding=False)

  def attention_kwargs(self, query: jax.Array, key: jax.Array, mask: ArrayLike | None = None,
                       **mask_kwargs) -> dict:
    """Keyword arguments (s, b or logit_multiplier) for `ssmax_jax.dot_product_attention`.

    Args:
      query: [B,T,N,H] (only its shape is read).
      key: [B,S,K,H] (only its shape is read).
      mask: the boolean mask the attention call gets.
      **mask_kwargs: the other masking arguments of that call (is_causal, segment_ids, ...):
        n is counted under them for the variants whose c the op does not compute itself.

    Returns:
      {} for softmax, {'s'} or {'s', 'b'} for the learned variants, else {'logit_multiplier'}
      with c float32 [B,T,N].
    """
    if self.variant == "softmax":
      return {}
    if self.variant == "ssmax":
      return {"s": self.s[...]}
    if self.variant == "ssmax_bias":
      return {"s": self.s[...], "b": self.b[...]}
    n = ops.attention_counts(query, key, mask, **mask_kwargs)
    c = ops.logit_multiplier(
        self.variant, n, s=self.fixed_s if self.variant == "ssmax_fixed" else None,
        l_train=self.l_train, floor_scale=self.floor_scale, attn_scale=self.attn_scale,
        num_heads=self.num_heads)
    return {"logit_multiplier": c}


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def project_rotate_qk(x_BTD, wq_DE, wk_DE, positions_BT, theta, head_dim):
  """(rope(x wq), rope(x wk)) as [B,T,N,H] arrays: q and k from one matmul, with a backward
  written out so that XLA keeps it in three kernels and two GEMMs.

  wq and wk have the same width E = N·H (no GQA). Autodiff's backward left XLA's dot merger to
  concatenate dq and dk for one weight-gradient GEMM after the fusion that rotates them back
  (it also reduces the SSMax multiplier's gradient, so it cannot write into the concatenation),
  and to sum the three input-gradient GEMMs with a separate add. Here the backward rotates dq
  and dk straight into one stacked array that feeds both the weight- and the input-gradient
  GEMM. Optimization barriers on x keep the dot merger from merging these GEMMs with v's
  projection, which would bring the concatenations back. 3.7 GB less traffic per step of the
  paper model, counted by benchmarks/compile_offline.py.
  """
  B, T, _ = x_BTD.shape
  w_D2E = jnp.stack([wq_DE, wk_DE], axis=1)
  y_BT2E = jnp.einsum("btd,dse->btse", jax.lax.optimization_barrier(x_BTD), w_D2E)
  y_BT2NH = y_BT2E.reshape(B, T, 2, -1, head_dim)
  return rope(y_BT2NH[:, :, 0], positions_BT, theta), rope(y_BT2NH[:, :, 1], positions_BT, theta)


def _project_rotate_qk_fwd(x_BTD, wq_DE, wk_DE, positions_BT, theta, head_dim):
  out = project_rotate_qk(x_BTD, wq_DE, wk_DE, positions_BT, theta, head_dim)
  return out, (x_BTD, jnp.stack([wq_DE, wk_DE], axis=1), positions_BT, theta)


def _project_rotate_qk_bwd(head_dim, residuals, grads):
  del head_dim
  x_BTD, w_D2E, positions_BT, theta = residuals
  B, T, _ = x_BTD.shape
  # RoPE is a rotation: its transpose is the rotation by the opposite angles. On a GPU a Pallas
  # kernel writes the stacked gradient (XLA's concatenate kernel ran at half the bandwidth).
  g_q, g_k = grads
  cos_BTP, sin_BTP = rope_cos_sin(positions_BT, theta, g_q.shape[-1])
  spec = activation_spec(g_q.shape, ("act_batch", "act_seq", "act_heads", "act_head_dim"))
  d_BT2NH = ops.rotate_back_stacked(g_q, g_k, cos_BTP, sin_BTP, spec=spec)
  d_BT2E = d_BT2NH.reshape(B, T, 2, -1)
  x_BTD = jax.lax.optimization_barrier(x_BTD)
  dx_BTD = jnp.einsum("btse,dse->btd", d_BT2E, w_D2E)
  dw_D2E = jnp.einsum("btd,btse->dse", x_BTD, d_BT2E)
  return dx_BTD, dw_D2E[:, 0], dw_D2E[:, 1], None, None  # positions and theta: no gradient


project_rotate_qk.defvjp(_project_rotate_qk_fwd, _project_rotate_qk_bwd)


def _write_rows(cache_BSKH, new_BTKH, start_B):
  """cache with row b's positions start_B[b] .. start_B[b] + T - 1 replaced by new."""
  write = lambda c_SKH, x_TKH, i: jax.lax.dynamic_update_slice_in_dim(c_SKH, x_TKH, i, axis=0)
  return jax.vmap(write)(cache_BSKH, new_BTKH.astype(cache_BSKH.dtype), start_B)


@init_signature
class SSMaxAttention(nnx.Module):
  """Multi-head (GQA) causal self-attention with RoPE and a length-scaled softmax.

  x [B,T,D] -> [B,T,D]. Projections have no bias. RoPE theta can be overridden per call (the
  paper raises it 50x at evaluation). `init_cache` enables decoding with a fixed-size KV cache.
  Submodules: q_proj, k_proj, v_proj, o_proj (`Dense`) and logit_scale (`LogitScale`).
  """

  def __init__(self, d_model: int, num_heads: int, *, num_kv_heads: int | None = None,
               head_dim: int | None = None, variant: str = "ssmax", l_train: int = 1024,
               rope_theta: float = 10000.0, s_init: float | None = None, b_init: float = 0.0,
               fixed_s: float = 1.0, floor_scale: float = 8192.0, attn_scale: float = 0.1,
               implementation: str | None = None, dtype: DTypeLike = jnp.float32,
               param_dtype: DTypeLike = jnp.float32, rngs: nnx.Rngs):
    """Creates the projections and the variant's parameters.

    Args:
      d_model: D, the width of the input and output.
      num_heads: N, the number of query heads.
      num_kv_heads: K, the number of key/value heads (GQA); None is N. N % K must be 0.
      head_dim: H, even (RoPE); None is D // N.
      variant: a name in `ssmax_jax.VARIANTS`.
      l_train: the training length: the default s_init and qwen_logn's L_train.
      rope_theta: RoPE's base; each call may override it.
      s_init: the initial s; None is `ssmax_jax.default_s_init(l_train)`.
      b_init: the initial b (ssmax_bias).
      fixed_s: ssmax_fixed's constant s.
      floor_scale: llama4_temperature's floor scale.
      attn_scale: llama4_temperature's attention scale.
      implementation: the attention backend (`ssmax_jax.dot_product_attention`); None picks
        one per platform.
      dtype: the compute dtype of the projections.
      param_dtype: the dtype the projection weights are stored in.
      rngs: the random streams; the weights draw from `rngs.params()`.

    Raises:
      ValueError: if K does not divide N or H is odd.
    """
    num_kv_heads = num_kv_heads or num_heads
    head_dim = head_dim or d_model // num_heads
    if num_heads % num_kv_heads:
      raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}.")
    if head_dim % 2:
      raise ValueError(f"head_dim={head_dim} must be even for RoPE.")
    self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
    self.rope_theta = rope_theta
    self.implementation = implementation
    dense = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q_proj = Dense(d_model, num_heads * head_dim, ("embed", "heads"), **dense)
    self.k_proj = Dense(d_model, num_kv_heads * head_dim, ("embed", "kv_heads"), **dense)
    self.v_proj = Dense(d_model, num_kv_heads * head_dim, ("embed", "kv_heads"), **dense)
    self.o_proj = Dense(num_heads * head_dim, d_model, ("heads", "embed"), **dense)
    self.logit_scale = LogitScale(num_heads, variant, l_train=l_train, s_init=s_init,
                                  b_init=b_init, fixed_s=fixed_s, floor_scale=floor_scale,
                                  attn_scale=attn_scale)
    self.cache_k, self.cache_v, self.cache_index = nnx.data(None), nnx.data(None), nnx.data(None)

  def init_cache(self, batch_size: int, max_len: int, dtype: DTypeLike = jnp.bfloat16) -> None:
    """Allocates an empty KV cache for `decode=True` calls (replacing any earlier one).

    Args:
      batch_size: B of the decoding calls.
      max_len: S, the most positions the cache holds (prompt plus generated tokens).
      dtype: the dtype keys and values are stored in.
    """
    shape = (batch_size, max_len, self.num_kv_heads, self.head_dim)
    self.cache_k = nnx.Cache(jnp.zeros(shape, dtype))
    self.cache_v = nnx.Cache(jnp.zeros(shape, dtype))
    # One index per row, so that prompts of different lengths decode at their own positions.
    self.cache_index = nnx.Cache(jnp.zeros((batch_size,), jnp.int32))

  def set_cache_lengths(self, lengths_B: ArrayLike) -> None:
    """Sets how many positions of each row's cache are in use (`init_cache` first).

    Row b's next `decode=True` call writes its keys and values at position lengths_B[b] on and
    attends the positions before it. After a prefill of right-padded prompts, set the lengths
    to the prompts' own: positions past them are overwritten as decoding goes on, and causal
    masking keeps every query from attending the padding still beyond its position.

    Args:
      lengths_B: [B] int positions in use per row, each in 0..max_len.
    """
    if self.cache_index is None:
      raise ValueError("set_cache_lengths needs a KV cache: call init_cache(batch_size, "
                       "max_len) first.")
    self.cache_index[...] = jnp.broadcast_to(
        jnp.asarray(lengths_B, jnp.int32), self.cache_index.shape)

  def __call__(self, x_BTD: jax.Array, *, positions_BT: jax.Array | None = None,
               segment_ids_BT: jax.Array | None = None, rope_theta: ArrayLike | None = None,
               decode: bool = False) -> jax.Array:
    """Causal self-attention of x, or one decoding step against the KV cache.

    Args:
      x_BTD: [B,T,D] inputs.
      positions_BT: [B,T] int RoPE positions (default 0..T-1); packed documents restart them.
        Ignored with decode=True (row b's positions follow its cache index, see
        `set_cache_lengths`).
      segment_ids_BT: [B,T] int document ids: a query attends only keys of its document, and
        n counts only those. Not supported with decode=True.
      rope_theta: RoPE's base for this call (may be traced); None is the module's.
      decode: append this call's keys and values to the cache (`init_cache` first) and attend
        every cached position up to each query's.

    Returns:
      [B,T,D] in the projections' compute dtype.
    """
    B, T, _ = x_BTD.shape
    N, K, H = self.num_heads, self.num_kv_heads, self.head_dim
    theta = self.rope_theta if rope_theta is None else rope_theta
    v_BTKH = shard(self.v_proj(x_BTD).reshape(B, T, K, H),
                   ("act_batch", "act_seq", "act_kv_heads", "act_head_dim"))
    if decode:
      if self.cache_k is None:
        raise ValueError("decode=True needs a KV cache: call init_cache(batch_size, max_len) first.")
      if segment_ids_BT is not None:
        raise ValueError("segment_ids_BT is not supported with decode=True.")
      start_B = self.cache_index[...]
      positions_BT = start_B[:, None] + jnp.arange(T, dtype=jnp.int32)
    elif positions_BT is None:
      positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    heads, kv_heads = (("act_batch", "act_seq", n, "act_head_dim")
                       for n in ("act_heads", "act_kv_heads"))
    if N == K:
      dt = self.q_proj.dtype
      q_BTNH, k_BTKH = project_rotate_qk(
          x_BTD.astype(dt), self.q_proj.kernel[...].astype(dt),
          self.k_proj.kernel[...].astype(dt), positions_BT, theta, H)
    else:
      q_BTNH = rope(self.q_proj(x_BTD).reshape(B, T, N, H), positions_BT, theta)
      k_BTKH = rope(self.k_proj(x_BTD).reshape(B, T, K, H), positions_BT, theta)
    q_BTNH, k_BTKH = shard(q_BTNH, heads), shard(k_BTKH, kv_heads)

    if decode:
      # Keys past each query's position are excluded by the causal mask, so the unused tail
      # of the cache never counts towards n.
      cache_k = _write_rows(self.cache_k[...], k_BTKH, start_B)
      cache_v = _write_rows(self.cache_v[...], v_BTKH, start_B)
      self.cache_k[...] = cache_k
      self.cache_v[...] = cache_v
      self.cache_index[...] = start_B + T
      k_BSKH, v_BSKH = cache_k.astype(q_BTNH.dtype), cache_v.astype(q_BTNH.dtype)
      mask_kwargs = dict(is_causal=True, query_positions=positions_BT)
    else:
      k_BSKH, v_BSKH = k_BTKH, v_BTKH
      # Packed documents restart positions, so causal masking uses the row index (default
      # query positions) while segment ids keep documents apart.
      mask_kwargs = dict(is_causal=True, segment_ids=segment_ids_BT)
    c_kwargs = self.logit_scale.attention_kwargs(q_BTNH, k_BSKH, **mask_kwargs)
    out_BTNH = ops.dot_product_attention(q_BTNH, k_BSKH, v_BSKH, **mask_kwargs, **c_kwargs,
                                         implementation=self.implementation)
    out_BTNH = shard(out_BTNH, ("act_batch", "act_seq", "act_heads", "act_head_dim"))
    return self.o_proj(out_BTNH.reshape(B, T, N * H))


@init_signature
class SSMaxAttentionFn(nnx.Module):
  """Drop-in `attention_fn` for flax.nnx.MultiHeadAttention, with its own learned s.

  Use one instance per layer:

      nnx.MultiHeadAttention(..., attention_fn=SSMaxAttentionFn(num_heads, 'ssmax'), rngs=rngs)

  It follows flax's `dot_product_attention` contract: any leading batch dims, masks and bias
  broadcastable to [..., N, T, S], `sow_weights=True` (the probabilities of the length-scaled
  logits go where flax puts its own, nnx.Intermediate 'attention_weights' of the attention
  module) and attention dropout. n is counted from the mask NNX passes (and is_causal).
  Weights are formed in plain JAX only for sowing or dropout; dropout therefore needs
  implementation None or 'xla'. docs/variants.md lists where it still differs from flax.
  """

  def __init__(self, num_heads: int, variant: str = "ssmax", *, l_train: int = 1024,
               s_init: float | None = None, b_init: float = 0.0, fixed_s: float = 1.0,
               floor_scale: float = 8192.0, attn_scale: float = 0.1,
               implementation: str | None = None):
    """Creates the variant's parameters (a `LogitScale`).

    Args:
      num_heads: N, the number of query heads of the attention module it serves.
      variant: a name in `ssmax_jax.VARIANTS`.
      l_train: the training length: the default s_init and qwen_logn's L_train.
      s_init: the initial s; None is `ssmax_jax.default_s_init(l_train)`.
      b_init: the initial b (ssmax_bias).
      fixed_s: ssmax_fixed's constant s.
      floor_scale: llama4_temperature's floor scale.
      attn_scale: llama4_temperature's attention scale.
      implementation: the attention backend; None picks one per platform.
    """
    self.logit_scale = LogitScale(num_heads, variant, l_train=l_train, s_init=s_init,
                                  b_init=b_init, fixed_s=fixed_s, floor_scale=floor_scale,
                                  attn_scale=attn_scale)
    self.implementation = implementation

  def __call__(self, query: jax.Array, key: jax.Array, value: jax.Array,
               bias: ArrayLike | None = None, mask: ArrayLike | None = None, *,
               is_causal: bool = False, dropout_rate: float = 0.0, deterministic: bool = True,
               dropout_rng: jax.Array | None = None, broadcast_dropout: bool = True,
               dtype: DTypeLike | None = None, precision=None, module=None,
               **unused_kwargs) -> jax.Array:
    """Attention as nnx.MultiHeadAttention calls its `attention_fn`.

    Args:
      query: [..., T, N, H] (any number of leading batch dims, none included).
      key: [..., S, K, H], the batch dims of query.
      value: [..., S, K, H].
      bias: added to the logits, broadcastable to [..., N, T, S].
      mask: broadcastable to [..., N, T, S]; nonzero (True) attends. n is counted under it.
      is_causal: adds the causal mask.
      dropout_rate: the attention dropout rate in [0, 1), applied unless deterministic.
      deterministic: no dropout.
      dropout_rng: the key dropout draws from (needed with dropout).
      broadcast_dropout: one dropout pattern for every batch entry and head, as flax.
      dtype: cast query, key and value to this dtype first.
      precision: ignored.
      module: the module to sow the attention weights [..., N, T, S] into (flax passes it
        with sow_weights=True); None sows nothing.
      **unused_kwargs: ignored.

    Returns:
      [..., T, N, H].

    Raises:
      ValueError: for dropout with implementation 'cudnn' or 'pallas', a dropout_rate outside
        [0, 1), dropout without dropout_rng, or mismatched batch dims.
    """
    del precision, unused_kwargs
    sow = None if module is None else (
        lambda w: module.sow(nnx.Intermediate, "attention_weights", w))
    return _dropin.flax_attention(
        query, key, value, bias, mask, c_kwargs_fn=functools.partial(
            self.logit_scale.attention_kwargs, is_causal=is_causal),
        is_causal=is_causal, dropout_rate=dropout_rate, deterministic=deterministic,
        dropout_rng=dropout_rng, broadcast_dropout=broadcast_dropout, dtype=dtype, sow=sow,
        implementation=self.implementation)


def _current_linen_module():
  """The linen module whose method is running: the attention module calling attention_fn."""
  stack = linen_module._context.module_stack  # linen passes `module` only with sow_weights
  if not stack or stack[-1] is None:
    raise ValueError("the linen attention_fn of a learned variant must be called by a linen "
                     "module (e.g. as MultiHeadDotProductAttention(attention_fn=...)), which "
                     "holds its s.")
  return stack[-1]


def make_linen_attention_fn(variant: str = "ssmax", *, l_train: int = 1024,
                            s_init: float | None = None, b_init: float = 0.0,
                            fixed_s: float = 1.0, floor_scale: float = 8192.0,
                            attn_scale: float = 0.1,
                            implementation: str | None = None) -> Callable[..., jax.Array]:
  """An `attention_fn` for flax.linen.MultiHeadDotProductAttention.

  Learned variants (ssmax, ssmax_bias) create their s (and b) as parameters 'ssmax_s' and
  'ssmax_b' [N] of the attention module that calls it; other variants need nothing. It
  follows flax's `dot_product_attention` contract: any leading batch dims, masks and bias
  broadcastable to [..., N, T, S], `sow_weights=True` (the probabilities of the length-scaled
  logits go to 'intermediates' 'attention_weights' of the attention module, as flax's) and
  attention dropout (implementation None or 'xla'); force_fp32_for_softmax keeps the sown
  weights in float32. docs/variants.md lists where it still differs from flax.

  Args:
    variant: a name in `ssmax_jax.VARIANTS`.
    l_train: the training length: the default s_init and qwen_logn's L_train.
    s_init: the initial s; None is `ssmax_jax.default_s_init(l_train)`.
    b_init: the initial b (ssmax_bias).
    fixed_s: ssmax_fixed's constant s.
    floor_scale: llama4_temperature's floor scale.
    attn_scale: llama4_temperature's attention scale.
    implementation: the attention backend; None picks one per platform.

  Returns:
    `attention_fn(query [..., T, N, H], key [..., S, K, H], value [..., S, K, H], bias=None,
    mask=None, ..., module=None) -> [..., T, N, H]`, with linen's arguments.

  Raises:
    ValueError: for an unknown variant.
  """
  ops.check_variant(variant)

  def attention_fn(query, key, value, bias=None, mask=None, broadcast_dropout=True,
                   dropout_rng=None, dropout_rate=0.0, deterministic=True, dtype=None,
                   precision=None, module=None, is_causal=False, force_fp32_for_softmax=False):
    del precision
    owner = module
    if variant in ops.LEARNED_VARIANTS and owner is None:
      owner = _current_linen_module()

    def c_kwargs(q_BTNH, k_BSKH, mask):
      num_heads = q_BTNH.shape[2]
      if variant in ops.LEARNED_VARIANTS:
        s0 = ops.default_s_init(l_train) if s_init is None else s_init
        kwargs = {"s": owner.param("ssmax_s", lambda _, shape: jnp.full(shape, s0, jnp.float32),
                                   (num_heads,))}
        if variant == "ssmax_bias":
          kwargs["b"] = owner.param(
              "ssmax_b", lambda _, shape: jnp.full(shape, b_init, jnp.float32), (num_heads,))
        return kwargs
      if variant == "softmax":
        return {}
      n = ops.attention_counts(q_BTNH, k_BSKH, mask, is_causal=is_causal)
      return {"logit_multiplier": ops.logit_multiplier(
          variant, n, s=fixed_s if variant == "ssmax_fixed" else None, l_train=l_train,
          floor_scale=floor_scale, attn_scale=attn_scale, num_heads=num_heads)}

    sow = None if module is None else (
        lambda w: module.sow("intermediates", "attention_weights", w))
    return _dropin.flax_attention(
        query, key, value, bias, mask, c_kwargs_fn=c_kwargs, is_causal=is_causal,
        dropout_rate=dropout_rate, deterministic=deterministic, dropout_rng=dropout_rng,
        broadcast_dropout=broadcast_dropout, dtype=dtype, sow=sow,
        implementation=implementation, fp32_weights=force_fp32_for_softmax)

  return attention_fn
