"""Moved to ssmax_jax/ops/rms_norm/triton.py (the kernel) and reference.py (its jnp reference);
this path is kept for one release."""
from ssmax_jax.ops.rms_norm.api import check_inputs  # noqa: F401
from ssmax_jax.ops.rms_norm.reference import reference_add_rms_norm  # noqa: F401
from ssmax_jax.ops.rms_norm.triton import (BLOCK_ROWS, BWD_NUM_STAGES,  # noqa: F401
                                           BWD_ROW_BLOCKS, NUM_WARPS, add_rms_norm, supported)
