"""Moved to ssmax_jax/ops/attention/reference.py; this path stays for one release."""
from ssmax_jax.ops.attention.reference import attention_xla  # noqa: F401
