"""Moved to ssmax_jax/ops/cross_entropy/ (api.py, reference.py); this path is kept for one
release."""
from ssmax_jax.ops.cross_entropy.api import (IMPLEMENTATIONS, LOGITS_DTYPES,  # noqa: F401
                                             check_options, cross_entropy_sum)
from ssmax_jax.ops.cross_entropy.reference import (reference_cross_entropy_sum,  # noqa: F401
                                                   xla_loss_and_grad)
