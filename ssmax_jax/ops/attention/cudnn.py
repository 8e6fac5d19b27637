"""The 'cudnn' backend: jax.nn.dot_product_attention(implementation='cudnn') with the
multiplier c folded into q (cuDNN takes no per-query multiplier)."""
import jax
import jax.numpy as jnp

from ssmax_jax.ops.attention import masks


def unsupported_reason(*, query, key, spec, bias, default_positions, platform):
  """Why the op cannot hand this call to cuDNN (None when it can): the arguments it does not
  pass on. Whatever else cuDNN cannot do, jax.nn reports when asked explicitly."""
  del query, key, bias, platform
  if spec.q_seg_BT is not None or not default_positions:
    return "no segment_ids or query_positions (use 'pallas' or 'xla')"
  return None


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
