"""Moved to ssmax_jax/ops/rope/triton.py (the kernel) and reference.py (its jnp reference);
this path is kept for one release."""
from ssmax_jax.ops.rope.api import check_inputs  # noqa: F401
from ssmax_jax.ops.rope.reference import reference_rotate_back_stacked  # noqa: F401
from ssmax_jax.ops.rope.triton import (BLOCK_ROWS, NUM_WARPS, rotate_back_stacked,  # noqa: F401
                                       supported)
