"""Attention with a per-query logit multiplier c (SSMax and the other length-scaled variants).

api.py is the public op (validation, then the backend choice of ops/_dispatch.py); masks.py
and variants.py compute the masks, counts n and multipliers; the backends, one module each,
each with `unsupported_reason(*, query, key, spec, bias, default_positions, platform)`:
reference.py ('xla'), cudnn.py, and the Pallas kernels ('pallas'): triton.py (any GPU; CPU in
interpret mode), mosaic_gpu.py with its backward in mosaic_gpu_vjp.py (Hopper), mosaic_tpu.py.
kernel_common.py holds math the kernels share, tuning.py their tuned settings;
context_parallel.py runs the op on a sequence sharded over a context axis.

Every kernel module exposes the same function (the kernel contract)::

    flash_attention(q_BTNH, k_BSKH, v_BSKH, c_BTN, q_pos_BT, q_seg_BT, kv_seg_BS, kv_len_B,
                    *, scale, causal, window, settings=None, interpret=False) -> o_BTNH

with `settings` its own `Settings` (None: `default_settings`, from tuning.py), and
`kernel_reason(...)` saying why it cannot take such arguments (flash_attention raises it):

- q [B,T,N,H], k/v [B,S,K,H] with N % K == 0 (GQA: query head h reads kv head h // (N // K)).
- c [B,T,N] float32: logit of (b,i,h,j) is c[b,i,h] * scale * <q[b,i,h], k[b,j,h//G]>,
  computed and softmaxed in float32.
- Key j of batch b is attended by query i iff all hold:
    causal:   j <= q_pos[b,i]                          (key positions are 0..S-1)
    window:   q_pos[b,i] - left <= j <= q_pos[b,i] + right   (window=(left,right) or None)
    segments: q_seg[b,i] == kv_seg[b,j]                (both None or both given)
    lengths:  j < kv_len[b]                            (None: all S keys are valid)
  q_pos None means positions 0..T-1 (the kernels' fastest paths).
- A query that attends no key returns zeros (and zero gradients).
- Differentiable (jax.custom_vjp) w.r.t. q, k, v and c; O(T) memory (log-sum-exp saved
  for the backward); the output has q's dtype.
The kernels build no masks from user arguments and know no variants: the op validates the
arguments, computes c for the variant, and calls one of them.
"""
from ssmax_jax.ops.attention.api import IMPLEMENTATIONS, attention_counts, dot_product_attention
from ssmax_jax.ops.attention.variants import (LEARNED_VARIANTS, VARIANTS, check_variant,
                                              default_s_init, logit_multiplier)
