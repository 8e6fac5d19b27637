"""Moved to ssmax_jax/ops/attention/variants.py; this path stays for one release."""
from ssmax_jax.ops.attention.variants import (LEARNED_VARIANTS, VARIANTS,  # noqa: F401
                                              check_variant, default_s_init, logit_multiplier)
