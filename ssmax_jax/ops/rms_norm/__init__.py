"""Residual add + RMSNorm, the two steps between a pre-norm block's branches.

A pre-norm transformer adds each branch's output to the residual stream and normalises the sum
for the next branch; `add_rms_norm` (api.py) does both. Backends, one module each, each with
`unsupported_reason(*, shape, spec, platform)`: reference.py ('xla', jnp) and triton.py (the
Pallas kernel, 'pallas': one kernel each way where XLA takes two to three; GPU, CPU in
interpret mode).

Contract: x [..., D] of a float dtype; delta None or x's shape; scale [D]. Returns
    sum = x + delta, added in float32 and rounded once to x's dtype (x itself when delta is None)
    y   = (sum_f32 * rsqrt(mean(sum_f32**2) + eps) * scale_f32).astype(out_dtype)
where sum_f32 is the rounded sum, as ssmax_jax.nn.layers.RMSNorm computes on the bf16 residual.
Differentiable w.r.t. x, delta and scale.
"""
from ssmax_jax.ops.rms_norm.api import (IMPLEMENTATIONS, add_rms_norm, check_implementation,
                                        check_inputs)
