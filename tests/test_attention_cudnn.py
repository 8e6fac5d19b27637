"""The 'cudnn' backend (ssmax_jax/ops/attention/cudnn.py) on a GPU (marked gpu): the shared
cases tagged cudnn, and SSMax through the op against the XLA path, gradients included.

cuDNN takes no multiplier: the op folds c into q, rounded to q's dtype, so the forward is
held (2e-2 of the largest reference magnitude, bf16) to the float64 reference on that rounded
q·c with c = 1.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssmax_jax
from ssmax_jax.ops.attention import cudnn, masks
from tests import attention_cases as ac

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")]


@pytest.mark.parametrize("case", ac.cases("cudnn"), ids=lambda c: c.name)
def test_shared_cases_forward(case):
  x = ac.draw(case)
  B, T, S, N, K, H = case.shape
  spec = masks.make_mask_spec(x.q.shape, x.k.shape, is_causal=case.causal, num_heads=N,
                              local_window_size=case.window)
  assert cudnn.auto_skip_reason(query=jnp.asarray(x.q, case.dtype), key=None, spec=spec,
                                bias=None, default_positions=True, platform="gpu") is None
  bf = lambda a: jnp.asarray(a, case.dtype)
  out = jax.jit(lambda q, k, v, c: cudnn.attention_cudnn(
      q, k, v, c, spec, scale=0.3, bias=None, n=masks.counts_from_spec(spec)))(
          bf(x.q), bf(x.k), bf(x.v), jnp.asarray(x.c))
  folded = np.asarray(bf(np.asarray(x.q) * x.c[..., None]).astype(jnp.float32))
  ref = ac.reference_out(x._replace(q=folded, c=np.ones_like(x.c)), scale=0.3,
                         causal=case.causal, window=case.window)
  err = np.abs(np.asarray(out.astype(jnp.float32)) - ref).max() / np.abs(ref).max()
  assert err <= 2e-2, err


@pytest.mark.parametrize("kw", [dict(is_causal=True),  # every row attends: no zeroing pass
                                dict(is_causal=True, key_value_seq_lengths=np.array([7, 0]))])
def test_cudnn_matches_xla_with_ssmax(kw):
  """cuDNN (s·log n folded into q) against the XLA path: output, and gradients of q, k, v, s;
  a batch row with no keys comes back as zeros."""
  q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in ac.qkv(21, t=128, s=128, n=4, k=2, h=64))
  s = jnp.array([0.3, 0.5, 0.7, 0.9], jnp.float32)

  def loss(impl, q, k, v, s):
    out = ssmax_jax.dot_product_attention(q, k, v, s=s, implementation=impl, **kw)
    return jnp.sum(out.astype(jnp.float32) ** 2), out

  (_, out_c), g_c = jax.value_and_grad(lambda *a: loss("cudnn", *a), (0, 1, 2, 3),
                                       has_aux=True)(q, k, v, s)
  (_, out_x), g_x = jax.value_and_grad(lambda *a: loss("xla", *a), (0, 1, 2, 3),
                                       has_aux=True)(q, k, v, s)
  np.testing.assert_allclose(np.asarray(out_c, np.float32), np.asarray(out_x, np.float32),
                             atol=3e-2, rtol=3e-2)
  for a, b in zip(g_c, g_x):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(a, b, atol=5e-2 * np.abs(b).max(), rtol=0)
  if "key_value_seq_lengths" in kw:
    assert not np.any(np.asarray(out_c[1], np.float32))
