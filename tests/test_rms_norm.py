"""The residual add + RMSNorm op (ssmax_jax/ops/rms_norm): its backends on one case table
(outputs and gradients against a float64 numpy formula and the model's RMSNorm; the kernel also
against the reference's autodiff), what a caller can get wrong, the backend choice, and the
kernel's Triton lowering for an H200 (traced on any machine)."""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.extend import core as jex_core

from ssmax_jax import ops
from ssmax_jax.nn.layers import RMSNorm
from ssmax_jax.ops import _dispatch
from ssmax_jax.ops.rms_norm import api, triton
from ssmax_jax.ops.rms_norm.reference import reference_add_rms_norm
from tests import op_backends as ob
from tests.op_backends import f64

EPS = 1e-6


class Case(NamedTuple):
  name: str
  shape: tuple
  dtype: object
  small_blocks: bool = True  # 8-row blocks, 2 per backward program: several programs


CASES = [Case("f32_2d", (32, 48), jnp.float32), Case("f32_3d", (2, 16, 96), jnp.float32),
         Case("bf16_2d", (32, 48), jnp.bfloat16), Case("bf16_3d", (4, 16, 96), jnp.bfloat16)]
# The compiled kernel at the paper's width in bf16 (4,096 rows), with its default tiles.
GPU_CASES = [Case("paper_bf16", (4, 1024, 768), jnp.bfloat16, small_blocks=False)]


def _inputs(shape, dtype, seed=0):
  """x, delta (of x's dtype), scale [D] float32, cotangents (d_sum, d_y)."""
  k = jax.random.split(jax.random.key(seed), 5)
  x = (2.0 * jax.random.normal(k[0], shape)).astype(dtype)
  delta = jax.random.normal(k[1], shape).astype(dtype)
  scale = 1.0 + 0.5 * jax.random.normal(k[2], shape[-1:])
  cts = tuple(jax.random.normal(kk, shape).astype(dtype) for kk in k[3:])
  return x, delta, scale, cts


def _numpy(s, scale, d_sum, d_y):
  """float64 (y, d_x, d_scale) from the (rounded) sum s, by the backward's formula."""
  s, scale, d_sum, d_y = (f64(a).reshape(-1, s.shape[-1]) for a in (s, scale, d_sum, d_y))
  rstd = 1.0 / np.sqrt((s * s).mean(1, keepdims=True) + EPS)
  xhat = s * rstd
  g = d_y * scale
  d_x = d_sum + rstd * (g - xhat * (g * xhat).mean(1, keepdims=True))
  return xhat * scale, d_x, (d_y * xhat).sum(0)


def _grads(fn, x, delta, scale, cts):
  """Outputs and the VJP of (sum, y) w.r.t. (x, delta, scale) at cotangents cts."""
  out, vjp = jax.vjp(fn, x, delta, scale)
  return out, vjp(cts)


def _backend(name, dtype, small_blocks=True):
  if name == "xla":
    return lambda x, d, s: reference_add_rms_norm(x, d, s, eps=EPS, out_dtype=dtype)
  tiles = dict(block_rows=8, bwd_row_blocks=2) if small_blocks else {}
  return lambda x, d, s: triton.add_rms_norm(x, d, s, eps=EPS, out_dtype=dtype,
                                             interpret=ob.INTERPRET, **tiles)


@pytest.mark.parametrize("with_delta", [True, False])
@pytest.mark.parametrize("backend,case", ob.params(CASES, GPU_CASES))
def test_matches_float64_and_the_model_norm(backend, case, with_delta):
  dtype, on_gpu = case.dtype, not case.small_blocks
  x, delta, scale, cts = _inputs(case.shape, dtype, seed=2 if on_gpu else 0)
  delta = delta if with_delta else None
  fn = _backend(backend, dtype, case.small_blocks)
  (s, y), grads = jax.jit(lambda *a: _grads(fn, *a))(x, delta, scale, cts)

  # The sum is bit-exact, and is the model's own residual add (x itself without delta).
  assert s.dtype == x.dtype and s.shape == x.shape and y.dtype == dtype
  np.testing.assert_array_equal(s, x + delta if with_delta else x)
  d_x, d_delta, d_scale = grads
  assert (d_delta is None) == (not with_delta)
  assert d_x.dtype == x.dtype and d_scale.dtype == scale.dtype
  if with_delta:
    np.testing.assert_array_equal(d_delta, d_x)  # the same gradient reaches both summands
  y64, dx64, dscale64 = _numpy(s, scale, *cts)
  y64, dx64 = y64.reshape(y.shape), dx64.reshape(y.shape)
  if on_gpu:  # bf16 at the paper's width: a few bf16 ulps of the largest entry
    np.testing.assert_allclose(f64(y), y64, atol=2 ** -6 * np.abs(y64).max())
    np.testing.assert_allclose(f64(d_x), dx64, atol=2 ** -6 * np.abs(dx64).max())
    np.testing.assert_allclose(f64(d_scale), dscale64, rtol=1e-4,
                               atol=1e-4 * np.abs(dscale64).max())
  else:
    ulp = float(jnp.finfo(dtype).eps)
    np.testing.assert_allclose(f64(y), y64, rtol=2 * ulp, atol=2e-6)
    # ... and so is the model's RMSNorm on that sum.
    norm = RMSNorm(case.shape[-1], eps=EPS, dtype=dtype, param_dtype=jnp.float32,
                   rngs=nnx.Rngs(0))
    norm.scale[...] = scale
    np.testing.assert_allclose(f64(y), f64(norm(s)), rtol=2 * ulp, atol=2 * ulp)
    # f32: a few ulps of the largest entry; bf16: d_x rounds once in the kernel and twice in
    # autodiff (the norm's gradient, then its sum with d_sum): an ulp or so.
    tol = 1e-6 if dtype == jnp.float32 else 2 ** -7
    np.testing.assert_allclose(f64(d_x), dx64, atol=tol * np.abs(dx64).max())
    # The kernel's d_scale sums float32 products over the rows: tight against float64 at any
    # input dtype; autodiff's, from bf16 d_y, to bf16 precision.
    if backend == "triton" or dtype == jnp.float32:
      np.testing.assert_allclose(f64(d_scale), dscale64, rtol=1e-5, atol=1e-5)
    else:
      np.testing.assert_allclose(f64(d_scale), dscale64, atol=tol * np.abs(dscale64).max())
  if backend == "triton":  # the kernel against the reference's autodiff
    (want_s, want_y), want_grads = jax.jit(lambda *a: _grads(_backend("xla", dtype), *a))(
        x, delta, scale, cts)
    np.testing.assert_array_equal(f64(s), f64(want_s))
    ulp = float(jnp.finfo(dtype).eps)
    y_tol = 2 ** -6 * np.abs(f64(want_y)).max() if on_gpu else 2 * ulp
    np.testing.assert_allclose(f64(y), f64(want_y), rtol=0 if on_gpu else 2 * ulp, atol=y_tol)
    tol = 2 ** -5 if on_gpu else (1e-6 if dtype == jnp.float32 else 2 ** -7)
    for got, want in zip(grads, want_grads):
      if want is not None:
        np.testing.assert_allclose(f64(got), f64(want), atol=tol * np.abs(f64(want)).max())


def _pallas_inputs(jaxpr):
  """Operand counts of the pallas_calls in a (closed) jaxpr, innermost included, in order."""
  counts = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "pallas_call":
      counts.append(len(eqn.invars))
    for sub in jex_core.jaxprs_in_params(eqn.params):
      counts += _pallas_inputs(sub)
  return counts


def test_an_unused_output_takes_no_gradient_traffic():
  x, delta, scale, (d_sum, d_y) = _inputs((16, 96), jnp.float32, seed=1)
  kernel = lambda x, d, s: triton.add_rms_norm(x, d, s, eps=EPS, out_dtype=jnp.float32,
                                               block_rows=4, interpret=True)
  ref = _backend("xla", jnp.float32)
  for pick in (lambda out: (out[1] * d_y).sum(),   # sum unused (the last block's norm)
               lambda out: (out[0] * d_sum).sum()):  # y unused: no backward kernel at all
    loss = lambda fn: lambda *a: pick(fn(*a))
    got = jax.grad(loss(kernel), (0, 1, 2))(x, delta, scale)
    want = jax.grad(loss(ref), (0, 1, 2))(x, delta, scale)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, atol=1e-5)
  # The backward without d_sum reads sum, rstd, d_y and scale only (forward: x, delta, scale).
  y_only = lambda *a: (kernel(*a)[1] * d_y).sum()
  both = lambda *a: sum((o * c).sum() for o, c in zip(kernel(*a), (d_sum, d_y)))
  operands = lambda f: _pallas_inputs(jax.make_jaxpr(jax.grad(f, (0, 1, 2)))(x, delta, scale).jaxpr)
  assert operands(y_only) == [3, 4]
  assert operands(both) == [3, 5]


@pytest.mark.parametrize("implementation", ["xla", "pallas"])
def test_the_op_checks_the_arrays_before_any_backend(implementation):
  x, delta, scale, _ = _inputs((2, 12, 48), jnp.bfloat16)
  call = lambda x, d, s: ops.add_rms_norm(x, d, s, eps=EPS, out_dtype=jnp.bfloat16,
                                          implementation=implementation)
  with pytest.raises(ValueError, match=r"scale has shape \(47,\), expected \(48,\)"):
    call(x, delta, scale[:47])
  with pytest.raises(ValueError, match=r"delta has shape \(2, 12, 47\), expected x's shape"):
    call(x, delta[..., :47], scale)
  with pytest.raises(ValueError, match=r"delta has shape \(12, 48\), expected x's shape"):
    call(x, delta[0], scale)
  with pytest.raises(ValueError, match="x has dtype int32"):
    call(x.astype(jnp.int32), None, scale)


def test_the_kernel_checks_its_tiles():
  x, delta, scale, _ = _inputs((2, 12, 48), jnp.bfloat16)
  call = lambda **kw: triton.add_rms_norm(x, delta, scale, eps=EPS, out_dtype=jnp.bfloat16,
                                          interpret=True, **kw)
  assert triton.supported(24, 8) and not triton.supported(24, 16)
  with pytest.raises(ValueError, match="24 rows do not split into blocks of block_rows=16"):
    call(block_rows=16)
  with pytest.raises(ValueError, match="block_rows=6 is not a power of two"):
    call(block_rows=6)
  with pytest.raises(ValueError, match="bwd_row_blocks=0: pass a positive count"):
    call(bwd_row_blocks=0)
  with pytest.raises(ValueError, match="bwd_num_stages=0: pass a positive pipelining depth"):
    call(bwd_num_stages=0)


def test_choice(monkeypatch):
  rows = 4 * triton.BLOCK_ROWS
  for impl in (None, "auto", "xla"):  # CPU: XLA unless asked for the kernel
    assert api._choose(impl, (rows, 8), None) == "xla"
  assert api._choose("pallas", (rows, 8), None) == "triton"  # interpret mode
  with pytest.raises(ValueError, match="norm implementation='triton' is unknown"):
    api._choose("triton", (rows, 8), None)
  with pytest.raises(ValueError, match="needs whole rows on each device and a multiple of "
                                       f"{triton.BLOCK_ROWS} rows .* change the batch or mesh"):
    api._choose("pallas", (rows + 1, 8), None)
  monkeypatch.setattr(_dispatch, "platform", lambda: "gpu")
  assert api._choose(None, (rows, 8), None) == "triton"
  assert api._choose(None, (rows + 1, 8), None) == "xla"  # not whole blocks
  P = jax.sharding.PartitionSpec
  with jax.sharding.use_abstract_mesh(ob.data_mesh(2, 2, 2)):  # rows split 4 ways
    assert api._choose(None, (rows, 8), P(("data", "fsdp"), None)) == "triton"  # 1 block each
    assert api._choose(None, (rows // 2, 8), P(("data", "fsdp"), None)) == "xla"  # 1/2 block
    assert api._choose(None, (rows, 8), P(None, "tensor")) == "xla"  # the width split
    with pytest.raises(ValueError, match=r"split over 'tensor'"):
      api._choose("pallas", (rows, 8), P(None, "tensor"))
  monkeypatch.setattr(_dispatch, "platform", lambda: "tpu")
  assert api._choose(None, (rows, 8), None) == "xla"
  with pytest.raises(ValueError, match="norm implementation='pallas' has no backend on tpu"):
    api._choose("pallas", (rows, 8), None)


def test_op_runs_the_chosen_backend():
  rows = 4 * triton.BLOCK_ROWS
  k = jax.random.split(jax.random.key(0), 3)
  x, delta = (jax.random.normal(kk, (2, rows, 8)) for kk in k[:2])
  scale = jax.random.normal(k[2], (8,))
  for d in (delta, None):  # 'pallas' (interpret mode here) and 'xla' agree
    got = ops.add_rms_norm(x, d, scale, eps=1e-6, out_dtype=jnp.float32, implementation="pallas")
    want = ops.add_rms_norm(x, d, scale, eps=1e-6, out_dtype=jnp.float32, implementation="xla")
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[0], want[0])
  fn = lambda x, d, s: ops.add_rms_norm(x, d, s, eps=1e-6, out_dtype=jnp.float32)
  assert "pallas" not in jax.jit(fn).lower(x, delta, scale).as_text().lower()  # None: XLA


@pytest.mark.parametrize("with_delta", [True, False])
def test_lowers_to_triton_for_h200_without_a_gpu(with_delta):
  """Pallas -> Triton IR for the paper's shape, forward and backward."""
  M, D, bf16 = 32768, 768, jnp.bfloat16
  tensor = jax.ShapeDtypeStruct((M, D), bf16)

  def step(x, delta, scale, d_sum, d_y):
    fn = lambda x, d, s: triton.add_rms_norm(x, d if with_delta else None, s, eps=EPS,
                                             out_dtype=bf16)
    out, vjp = jax.vjp(fn, x, delta, scale)
    return out, vjp((d_sum, d_y))

  text = ob.h200_lowering(step, tensor, tensor, jax.ShapeDtypeStruct((D,), jnp.float32),
                          tensor, tensor)
  assert text.count("__gpu$xla.gpu.triton") == 2
  assert f"grid_x = {M // triton.BLOCK_ROWS}" in text  # forward: one program per block
  bwd_programs = M // (triton.BLOCK_ROWS * triton.BWD_ROW_BLOCKS)
  assert f"grid_x = {bwd_programs}" in text
