"""Pallas kernels: flash attention with a fused per-query logit multiplier (the contract below),
the training loss's cross-entropy over materialised logits (cross_entropy_gpu.py), the
residual add + RMSNorm of a pre-norm block (rms_norm_gpu.py) and RoPE's transpose on the q and k
gradients, written stacked (rope_gpu.py), each with its own contract in its docstring.

Lowest layer of ssmax_jax: explicit arrays in and out, no masks built here from user
arguments, no knowledge of variants. `ssmax_jax.ops` validates arguments, computes the
multiplier c for the variant, and calls one of these backends.

Every backend module exposes the same function (the kernel contract)::

    flash_attention(q_BTNH, k_BSKH, v_BSKH, c_BTN, q_pos_BT, q_seg_BT, kv_seg_BS, kv_len_B,
                    *, scale, causal, window, block_q=None, block_k=None, interpret=False)
        -> o_BTNH

- q [B,T,N,H], k/v [B,S,K,H] with N % K == 0 (GQA: query head h reads kv head h // (N // K)).
- c [B,T,N] float32: logit of (b,i,h,j) is c[b,i,h] * scale * <q[b,i,h], k[b,j,h//G]>,
  computed and softmaxed in float32.
- Key j of batch b is attended by query i iff all hold:
    causal:   j <= q_pos[b,i]                          (key positions are 0..S-1)
    window:   q_pos[b,i] - left <= j <= q_pos[b,i] + right   (window=(left,right) or None)
    segments: q_seg[b,i] == kv_seg[b,j]                (both None or both given)
    lengths:  j < kv_len[b]                            (None: all S keys are valid)
- A query that attends no key returns zeros (and zero gradients).
- Differentiable (jax.custom_vjp) w.r.t. q, k, v and c; O(T) memory (log-sum-exp saved
  for the backward); the output has q's dtype.
"""
