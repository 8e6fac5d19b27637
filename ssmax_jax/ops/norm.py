"""Moved to ssmax_jax/ops/rms_norm/ (api.py); this path is kept for one release."""
from ssmax_jax.ops._sharding import local_rows  # noqa: F401
from ssmax_jax.ops.rms_norm.api import (IMPLEMENTATIONS, add_rms_norm,  # noqa: F401
                                        check_implementation)
