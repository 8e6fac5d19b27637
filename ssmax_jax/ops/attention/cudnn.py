"""The 'cudnn' backend: jax.nn.dot_product_attention(implementation='cudnn') with the
multiplier c folded into q (cuDNN takes no per-query multiplier)."""
import jax
from jax._src.cudnn import fused_attention_stablehlo as fused  # its checks; no public API
import jax.numpy as jnp

from ssmax_jax.ops.attention import masks


def _jax_refusal(query, key, spec, bias):
  """What jax's own cuDNN checks say about this call (None: they pass), asked at trace time.

  jax.nn raises them only when the call is lowered; asked here, implementation=None can pass
  cuDNN over instead of failing. A gradient may follow, so the training checks are asked."""
  try:
    version = fused.check_cudnn_version()
  except RuntimeError as e:
    if jax.default_backend() == "gpu":
      return str(e)
    version = 0  # off a GPU (a patched platform in tests): only the shape checks can answer
  has_bias = bias is not None or spec.mask_BNTS is not None
  bias_shape = None
  if has_bias:  # jax.nn adds the mask to the bias; cuDNN wants them [B,N,T,S]-shaped on T, S
    shapes = [(1,) * (4 - len(x.shape)) + tuple(x.shape)
              for x in (bias, spec.mask_BNTS) if x is not None]
    bias_shape = jax.ShapeDtypeStruct(jnp.broadcast_shapes(*shapes), query.dtype)
  value = jax.ShapeDtypeStruct(key.shape, key.dtype)
  try:
    fused.check_layout(query, key, value, bias_shape, None, None, None, None, None, None,
                       fused.AttentionLayout.BTNH)
    # has_bias=True: for training, jax passes a zero-size placeholder where there is no bias,
    # and its own check then counts it as one (odd T or S fails even without a mask).
    fused.check_is_flash_attention(query, key, value, fused.AttentionLayout.BTNH.value,
                                   version, True, True)
  except (NotImplementedError, ValueError) as e:
    return f"jax's cuDNN check: {e}"
  return None


def unsupported_reason(*, query, key, spec, bias, default_positions, platform):
  """Why the op cannot hand this call to cuDNN (None when it can): the arguments it does not
  pass on, then jax's own checks of what cuDNN takes (shapes, dtypes, head dims)."""
  if platform != "gpu":
    return "cuDNN runs on a GPU only (use 'xla' or 'pallas')"
  if spec.q_seg_BT is not None or not default_positions:
    return "no segment_ids or query_positions (use 'pallas' or 'xla')"
  if spec.window is not None and spec.window[1] and not (spec.causal and spec.kv_len_B is None):
    # jax.nn hands cuDNN a left window only; a right side is moot only under a plain causal mask
    return "a window with a right side, unless causal without lengths (use 'pallas' or 'xla')"
  return _jax_refusal(query, key, spec, bias)


def auto_skip_reason(*, query, key, spec, bias, default_positions, platform):
  """Why implementation=None passes over cuDNN: the calls it is not known to fit."""
  del key, bias, default_positions
  H = query.shape[-1]
  if platform != "gpu":
    return "not a GPU"
  if query.dtype not in (jnp.bfloat16, jnp.float16):
    return f"dtype {query.dtype} (bfloat16 or float16 only)"
  if H % 8 or H > 128:
    return f"head dim {H} (a multiple of 8, at most 128)"
  if spec.window is not None and not (spec.causal and spec.window[1] == 0):
    return "a window other than causal (left, 0)"
  return None


def attention_cudnn(q, k, v, c, spec, *, scale, bias, n):
  """[B,T,N,H] in q's dtype; n: the counts [B,T] (or [B,T,N]), used only when rows may be empty."""
  if c is not None:
    # cuDNN has no multiplier input: fold c into q (rounded to q's dtype; docs/variants.md).
    q = (q.astype(jnp.float32) * c[..., None]).astype(q.dtype)
  mask = spec.mask_BNTS
  out = jax.nn.dot_product_attention(
      q, k, v, bias=bias, mask=mask, scale=scale, is_causal=spec.causal,
      key_value_seq_lengths=spec.kv_len_B, local_window_size=spec.window,
      implementation="cudnn")
  # jax.nn returns mean(v) for a query with no key; we return zeros like every other backend.
  # Where the mask rules that out, skip the pass (a read and write of `out`, and its backward).
  if masks.every_query_attends(spec):
    return out.astype(q.dtype)
  attends = (n > 0) if n.ndim == 3 else (n > 0)[:, :, None]
  return jnp.where(attends[..., None], out, 0).astype(q.dtype)
