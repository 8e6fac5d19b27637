"""The public ops, one package each with its backends: attention (masks, attended-key counts n,
multipliers, backend choice), rms_norm (the residual add + RMSNorm of a pre-norm block), rope
(RoPE's transpose on the q and k gradients) and cross_entropy (the chunked training loss)."""
from ssmax_jax.ops.attention import (IMPLEMENTATIONS, LEARNED_VARIANTS, VARIANTS,
                                     attention_counts, check_variant, default_s_init,
                                     dot_product_attention, logit_multiplier)
from ssmax_jax.ops import masks, variants, xla  # noqa: F401 -- old paths, shims for one release
from ssmax_jax.ops import norm  # noqa: F401 -- old path, a shim for one release
from ssmax_jax.ops.rms_norm import IMPLEMENTATIONS as NORM_IMPLEMENTATIONS
from ssmax_jax.ops.rms_norm import add_rms_norm
from ssmax_jax.ops.rms_norm import check_implementation as check_norm_implementation
from ssmax_jax.ops.rope import rotate_back_stacked
