"""Deprecated: the kernels moved next to the ops that call them; this package stays for one
release as re-exports. Attention: ssmax_jax/ops/attention/ (triton.py, mosaic_gpu.py,
mosaic_tpu.py; the kernel contract is in its package docstring)."""
