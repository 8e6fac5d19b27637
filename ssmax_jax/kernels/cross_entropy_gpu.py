"""Moved to ssmax_jax/ops/cross_entropy/triton.py (the kernel) and reference.py (its contract
in XLA); this path is kept for one release."""
from ssmax_jax.ops.cross_entropy.reference import xla_loss_and_grad  # noqa: F401
from ssmax_jax.ops.cross_entropy.triton import (BLOCK_ROWS, BLOCK_VOCAB, NUM_STAGES,  # noqa: F401
                                                NUM_WARPS, cross_entropy_with_grad, supported)
