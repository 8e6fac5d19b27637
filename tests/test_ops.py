"""The norm op's backend choice and its 'pallas' route against 'xla' (the attention op's tests
are tests/test_attention_*.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmax_jax import ops


def test_norm_backend_choice_and_errors():
  from ssmax_jax.ops import norm
  rows = 4 * norm.rms_norm_gpu.BLOCK_ROWS
  assert norm.resolve_implementation("auto", (rows, 8), backend="gpu") == "pallas"
  assert norm.resolve_implementation("auto", (rows, 8), backend="cpu") == "xla"
  assert norm.resolve_implementation("auto", (rows + 1, 8), backend="gpu") == "xla"
  assert norm.resolve_implementation("xla", (rows + 1, 8)) == "xla"
  with pytest.raises(ValueError, match="needs whole rows on each device and a multiple of"):
    norm.resolve_implementation("pallas", (rows + 1, 8))
  with pytest.raises(ValueError, match="'pallas' is a GPU \\(Triton\\) kernel"):
    norm.resolve_implementation("pallas", (rows, 8), backend="tpu")
  with pytest.raises(ValueError, match="norm implementation='triton' is unknown"):
    norm.resolve_implementation("triton", (rows, 8))
  x = jnp.ones((2, rows, 8))
  with pytest.raises(ValueError, match=rf"delta has shape \({rows}, 8\), expected x's shape"):
    ops.add_rms_norm(x, x[0], jnp.ones(8), eps=1e-6, out_dtype=jnp.float32)
  # 'pallas' (interpret mode here) and 'xla' agree, with and without the residual add.
  k = jax.random.split(jax.random.key(0), 3)
  x, delta = (jax.random.normal(kk, (2, rows, 8)) for kk in k[:2])
  scale = jax.random.normal(k[2], (8,))
  for d in (delta, None):
    got = ops.add_rms_norm(x, d, scale, eps=1e-6, out_dtype=jnp.float32, implementation="pallas")
    want = ops.add_rms_norm(x, d, scale, eps=1e-6, out_dtype=jnp.float32, implementation="xla")
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[0], want[0])
