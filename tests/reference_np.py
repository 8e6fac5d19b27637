"""Float64 NumPy reference for SSMax attention, written from the definition (docs/variants.md).

Deliberately naive (loops over batch and head, dense T x S) so that it is easy to check by eye;
every backend and the public op are compared against it.
"""
import numpy as np


def allowed_mask_np(B, T, S, *, q_pos=None, causal=False, window=None, q_seg=None, kv_seg=None,
                    kv_len=None, mask=None):
  """Boolean [B,T,S]: True where query i of batch b attends key j."""
  q_pos = np.broadcast_to(np.arange(T) if q_pos is None else np.asarray(q_pos), (B, T))
  j = np.arange(S)[None, None, :]
  p = q_pos[:, :, None]
  ok = np.ones((B, T, S), bool)
  if causal:
    ok &= j <= p
  if window is not None:
    left, right = (window, window) if isinstance(window, int) else window
    ok &= (j >= p - left) & (j <= p + right)
  if q_seg is not None:
    ok &= np.asarray(q_seg)[:, :, None] == np.asarray(kv_seg)[:, None, :]
  if kv_len is not None:
    ok &= j < np.asarray(kv_len)[:, None, None]
  if mask is not None:  # dense [B or 1, N or 1, T, S] handled by caller per head; here [B,T,S]
    ok &= np.asarray(mask, bool)
  return ok


def attention_np(q, k, v, c=None, *, scale=None, bias=None, head_mask=None, **mask_kwargs):
  """o[b,i,h] = sum_j softmax_j(c[b,i,h]*scale*q.k + bias) v over allowed j; zeros if none.

  q [B,T,N,H], k/v [B,S,K,H], c [B,T,N] or None (=1), bias broadcastable to [B,N,T,S],
  head_mask broadcastable to [B,N,T,S] (True = attend), mask_kwargs as allowed_mask_np.
  Returns (o [B,T,N,H] float64, n [B,T,N] attended-key counts).
  """
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  B, T, N, H = q.shape
  S, K = k.shape[1], k.shape[2]
  G = N // K
  scale = 1.0 / np.sqrt(H) if scale is None else scale
  c = np.ones((B, T, N)) if c is None else np.asarray(c, np.float64)
  base = allowed_mask_np(B, T, S, **mask_kwargs)
  o = np.zeros((B, T, N, H))
  n = np.zeros((B, T, N), np.int64)
  for b in range(B):
    for h in range(N):
      ok = base[b].copy()
      if head_mask is not None:
        ok &= np.broadcast_to(np.asarray(head_mask, bool), (B, N, T, S))[b, h]
      z = c[b, :, h, None] * scale * (q[b, :, h] @ k[b, :, h // G].T)
      if bias is not None:
        z = z + np.broadcast_to(np.asarray(bias, np.float64), (B, N, T, S))[b, h]
      z = np.where(ok, z, -np.inf)
      zmax = np.max(z, axis=-1, keepdims=True)
      zmax = np.where(np.isfinite(zmax), zmax, 0.0)
      e = np.where(ok, np.exp(z - zmax), 0.0)
      denom = e.sum(-1, keepdims=True)
      p = np.where(denom > 0, e / np.where(denom > 0, denom, 1.0), 0.0)
      o[b, :, h] = p @ v[b, :, h // G]
      n[b, :, h] = ok.sum(-1)
  return o, n


def multiplier_np(variant, n, *, s=None, b=None, l_train=None, floor_scale=8192.0, attn_scale=0.1):
  """c for each variant as a float64 array shaped like n ([B,T,N])."""
  log_n = np.log(np.maximum(n, 1).astype(np.float64))
  if variant == "softmax":
    return np.ones_like(log_n)
  if variant == "ssmax":
    return np.asarray(s, np.float64) * log_n
  if variant == "ssmax_bias":
    return np.asarray(s, np.float64) * log_n + np.asarray(b, np.float64)
  if variant == "ssmax_fixed":
    return (1.0 if s is None else float(s)) * log_n
  if variant == "qwen_logn":
    return np.maximum(1.0, log_n / np.log(l_train))
  if variant == "llama4_temperature":
    return np.log(np.floor(np.maximum(n, 1) / floor_scale) + 1.0) * attn_scale + 1.0
  raise ValueError(variant)
