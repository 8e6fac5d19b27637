"""RoPE's transpose on the q and k gradients, written stacked.

The fused q/k projection's backward (ssmax_jax.nn.attention.project_rotate_qk) rotates both
gradients back and stacks them as one [B,T,2,N,H] array for its two gradient GEMMs;
`rotate_back_stacked` (api.py) does that. Backends, one module each, each with
`unsupported_reason(*, shape, spec, platform)`: reference.py ('xla', jnp) and triton.py (the
Pallas kernel, 'pallas'; GPU, CPU in interpret mode).

Contract: g_q, g_k [..., N, H] of one float dtype (M rows: the product of the leading dims);
cos, sin [..., P] float32 with P = H/2 (the angles of each row's position). Returns
d [..., 2, N, H] in g's dtype with, for x = g_q (d[..., 0, :, :]) and x = g_k
(d[..., 1, :, :]) and halves x1 = x[..., :P], x2 = x[..., P:]:
    d[..., :P] = x1 * cos + x2 * sin,   d[..., P:] = x2 * cos - x1 * sin
(the rotate-half RoPE by the opposite angles), computed in float32 and rounded once.
"""
from ssmax_jax.ops.rope.api import IMPLEMENTATIONS, check_inputs, rotate_back_stacked
