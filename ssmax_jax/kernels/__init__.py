"""Deprecated: the Pallas kernels move next to the ops that call them (ssmax_jax/ops/<op>/);
a module here that only re-exports stays for one release. Attention's kernels are in
ssmax_jax/ops/attention/ (triton.py, mosaic_gpu.py with mosaic_gpu_vjp.py, mosaic_tpu.py), and
their kernel contract in that package's docstring; the norm's, RoPE's and the loss's are
ssmax_jax/ops/{rms_norm,rope,cross_entropy}/triton.py."""
