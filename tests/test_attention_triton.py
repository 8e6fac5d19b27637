"""The Pallas Triton kernels (ssmax_jax/ops/attention/triton.py) on the shared cases:
interpret mode on CPU, compiled on a GPU (marked gpu).

Tolerances relative to the largest reference magnitude: float32 1e-5 (the kernel's dots run
at Precision.HIGHEST, i.e. IEEE float32 and not TF32 on the GPU), plus 1e-6 absolute on
gradients: dS = P*(dP - D) subtracts terms of size |dO||V| (about 8 here) and rounds at ~1e-6
even when the gradient itself is tiny; bfloat16 2e-2 forward and 4e-2 gradients (probabilities
and dS are rounded to bf16 before their matmuls, as in any flash kernel).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmax_jax.ops.attention import triton
from tests import attention_cases as ac
from tests import op_backends as ob

TOLS = {jnp.float32: (ac.F32_TOL, ac.F32_TOL), jnp.bfloat16: (2e-2, 4e-2)}
INTERPRET = jax.default_backend() == "cpu"
SCALE = 0.3


def _settings(head_dim, small):
  """The defaults, or 16-row blocks everywhere so that small shapes span several blocks."""
  settings = triton.default_settings(head_dim)
  if not small:
    return settings
  return triton.Settings(fwd=(16, 16) + settings.fwd[2:], dq=(16, 16, 4, 1),
                         dkdv=(16, 16, 4, 1))


@functools.cache
def _fn(head_dim, small, causal, window):
  """Jitted forward and gradients of the kernel; one compile per static config and shape."""
  run = functools.partial(triton.flash_attention, settings=_settings(head_dim, small),
                          interpret=INTERPRET)
  return ac.out_and_grads(run, scale=SCALE, causal=causal, window=window)


def _check(case, x):
  tol_fwd, tol_grad = TOLS[case.dtype]
  fn = _fn(case.shape[-1], case.small_blocks, case.causal, case.window)
  return ac.check(fn, x, case.dtype, scale=SCALE, causal=case.causal, window=case.window,
                  tol_fwd=tol_fwd, tol_grad=tol_grad, grad_atol=1e-6)


@pytest.mark.parametrize("case", ac.cases("triton"), ids=lambda c: c.name)
def test_forward_and_gradients(case):
  _check(case, ac.draw(case))


# Seeded sweep: 3 static configs x 36 random cases, each checked forward and backward.
SWEEPS = [ac.Case("sweep_causal_segments", (2, 24, 40, 2, 1, 64), causal=True,
                  segments="packed", small_blocks=True),
          ac.Case("sweep_causal_window", (2, 24, 40, 2, 1, 64), causal=True, window=(6, 0),
                  small_blocks=True),
          ac.Case("sweep_window_segments", (2, 24, 40, 2, 1, 64), window=(4, 4),
                  segments="packed", small_blocks=True)]


@pytest.mark.parametrize("config", range(len(SWEEPS)))
def test_random_sweep(config):
  case = SWEEPS[config]
  rng = np.random.default_rng(1000 + config)
  for i in range(36):
    segments = ("packed" if i % 2 else "random") if case.segments else None
    x = ac.draw(case, rng, positions="offset" if i % 3 else "arbitrary",
                segments=segments, lengths="random" if i % 4 else "full")
    _check(case, x)


def test_rejects_half_given_segments():
  x = jnp.zeros((1, 16, 1, 64))
  with pytest.raises(ValueError, match="q_seg_BT"):
    triton.flash_attention(x, x, x, jnp.ones((1, 16, 1)), None, jnp.zeros((1, 16), int),
                           None, None, scale=1.0, causal=True, window=None,
                           interpret=INTERPRET)


def test_default_settings_follow_the_tuning_table():
  assert triton.default_settings(64) == triton.Settings(
      fwd=(128, 128, 8, 3), dkdv=(64, 64, 4, 3), dq=(64, 64, 4, 3))
  assert triton.default_settings(128) == triton.Settings(
      fwd=(128, 64, 8, 3), dkdv=(64, 128, 8, 3), dq=(128, 64, 8, 3))


def test_forward_and_backward_lower_to_triton_for_h200_without_a_gpu():
  # Every primitive of the kernels (the masked-row cleaning included) must have a Triton
  # lowering; interpret mode on the CPU does not check that.
  B, T, N, H = 2, 256, 4, 64
  x = jax.ShapeDtypeStruct((B, T, N, H), jnp.bfloat16)
  args = (x, x, x, jax.ShapeDtypeStruct((B, T, N), jnp.float32),
          jax.ShapeDtypeStruct((B, T), jnp.int32), jax.ShapeDtypeStruct((B,), jnp.int32))

  def out(q, k, v, c, seg, kv_len):
    return triton.flash_attention(q, k, v, c, None, seg, seg, kv_len, scale=0.125, causal=True,
                                  window=None)

  loss = lambda *a: out(*a).astype(jnp.float32).sum()
  assert "__gpu$xla.gpu.triton" in ob.h200_lowering(out, *args)
  assert ob.h200_lowering(jax.grad(loss, argnums=(0, 1, 2, 3)), *args).count(
      "__gpu$xla.gpu.triton") == 3
