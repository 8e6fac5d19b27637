"""The public attention op: masks, attended-key counts n, multipliers, backend choice."""
from ssmax_jax.ops.attention import IMPLEMENTATIONS, attention_counts, dot_product_attention
from ssmax_jax.ops.variants import (LEARNED_VARIANTS, VARIANTS, check_variant, default_s_init,
                                    logit_multiplier)
