"""Moved to ssmax_jax/ops/attention/masks.py; this path stays for one release."""
from ssmax_jax.ops.attention.masks import (QUERY_CHUNK, MaskSpec, allowed_BNTS,  # noqa: F401
                                           counts_from_spec, every_query_attends,
                                           full_allowed_BNTS, make_mask_spec)
