"""The fused residual add + RMSNorm kernel (ssmax_jax/kernels/rms_norm_gpu.py) in interpret mode:
outputs and gradients against its jnp reference (jax autodiff) and a float64 numpy formula,
what a caller can get wrong, and its Triton lowering for an H200 (traced on any machine)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.extend import core as jex_core

from ssmax_jax.kernels import rms_norm_gpu
from ssmax_jax.kernels.rms_norm_gpu import add_rms_norm, reference_add_rms_norm
from ssmax_jax.nn.layers import RMSNorm

EPS = 1e-6


def _f64(a):
  return np.asarray(jnp.asarray(a, jnp.float32), np.float64)


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
  s, scale, d_sum, d_y = (_f64(a).reshape(-1, s.shape[-1]) for a in (s, scale, d_sum, d_y))
  rstd = 1.0 / np.sqrt((s * s).mean(1, keepdims=True) + EPS)
  xhat = s * rstd
  g = d_y * scale
  d_x = d_sum + rstd * (g - xhat * (g * xhat).mean(1, keepdims=True))
  return xhat * scale, d_x, (d_y * xhat).sum(0)


def _grads(fn, x, delta, scale, cts):
  """Outputs and the VJP of (sum, y) w.r.t. (x, delta, scale) at cotangents cts."""
  out, vjp = jax.vjp(fn, x, delta, scale)
  return out, vjp(cts)


CASES = [((32, 48), jnp.float32), ((2, 16, 96), jnp.float32),
         ((32, 48), jnp.bfloat16), ((4, 16, 96), jnp.bfloat16)]


@pytest.mark.parametrize("with_delta", [True, False])
@pytest.mark.parametrize("shape,dtype", CASES)
def test_matches_reference_and_float64(shape, dtype, with_delta):
  x, delta, scale, cts = _inputs(shape, dtype)
  delta = delta if with_delta else None
  kernel = lambda x, d, s: add_rms_norm(x, d, s, eps=EPS, out_dtype=dtype, block_rows=8,
                                        bwd_row_blocks=2, interpret=True)
  ref = lambda x, d, s: reference_add_rms_norm(x, d, s, eps=EPS, out_dtype=dtype)
  (s, y), grads = _grads(kernel, x, delta, scale, cts)
  (want_s, want_y), want_grads = _grads(ref, x, delta, scale, cts)

  # The sum is bit-exact, and is the model's own residual add (x itself without delta).
  assert s.dtype == x.dtype and s.shape == x.shape and y.dtype == dtype
  np.testing.assert_array_equal(s, want_s)
  np.testing.assert_array_equal(s, x + delta if with_delta else x)
  ulp = float(jnp.finfo(dtype).eps)
  np.testing.assert_allclose(_f64(y), _f64(want_y), rtol=2 * ulp, atol=2 * ulp)
  # ... and so is the model's RMSNorm on that sum.
  norm = RMSNorm(shape[-1], eps=EPS, dtype=dtype, param_dtype=jnp.float32,
                 rngs=nnx.Rngs(0))
  norm.scale[...] = scale
  np.testing.assert_allclose(_f64(y), _f64(norm(s)), rtol=2 * ulp, atol=2 * ulp)

  want64_y, want64_dx, want64_dscale = _numpy(s, scale, *cts)
  np.testing.assert_allclose(_f64(y).reshape(want64_y.shape), want64_y, rtol=2 * ulp, atol=2e-6)

  d_x, d_delta, d_scale = grads
  assert (d_delta is None) == (not with_delta)
  assert d_x.dtype == x.dtype and d_scale.dtype == scale.dtype
  # f32: a few ulps of the largest entry; bf16: the kernel rounds once where autodiff rounds
  # twice (the norm's gradient, then its sum with d_sum), so they differ by an ulp or so.
  tol = 1e-6 if dtype == jnp.float32 else 2 ** -7
  for got, want in zip(grads, want_grads):
    if got is None:
      continue
    scale_of = float(np.abs(_f64(want)).max())
    np.testing.assert_allclose(_f64(got), _f64(want), atol=tol * scale_of)
  if with_delta:
    np.testing.assert_array_equal(d_delta, d_x)  # the same gradient reaches both summands
  dx_flat = _f64(d_x).reshape(want64_dx.shape)
  np.testing.assert_allclose(dx_flat, want64_dx, atol=tol * np.abs(want64_dx).max())
  # d_scale sums float32 products over the rows: tight against float64 at any input dtype.
  np.testing.assert_allclose(_f64(d_scale), want64_dscale, rtol=1e-5, atol=1e-5)


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
  kernel = lambda x, d, s: add_rms_norm(x, d, s, eps=EPS, out_dtype=jnp.float32, block_rows=4,
                                        interpret=True)
  ref = lambda x, d, s: reference_add_rms_norm(x, d, s, eps=EPS, out_dtype=jnp.float32)
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


def test_what_a_caller_can_get_wrong():
  x, delta, scale, _ = _inputs((2, 12, 48), jnp.bfloat16)
  call = lambda x, d, s, **kw: add_rms_norm(x, d, s, eps=EPS, out_dtype=jnp.bfloat16,
                                            interpret=True, **kw)
  assert rms_norm_gpu.supported(24, 8) and not rms_norm_gpu.supported(24, 16)
  with pytest.raises(ValueError, match="24 rows do not split into blocks of block_rows=16"):
    call(x, delta, scale, block_rows=16)
  with pytest.raises(ValueError, match="block_rows=6 is not a power of two"):
    call(x, delta, scale, block_rows=6)
  with pytest.raises(ValueError, match=r"scale has shape \(47,\), expected \(48,\)"):
    call(x, delta, scale[:47])
  with pytest.raises(ValueError, match=r"delta has shape \(2, 12, 47\), expected x's shape"):
    call(x, delta[..., :47], scale)
  with pytest.raises(ValueError, match="x has dtype int32"):
    call(x.astype(jnp.int32), None, scale)
  with pytest.raises(ValueError, match="bwd_row_blocks=0: pass a positive count"):
    call(x, delta, scale, bwd_row_blocks=0)
  with pytest.raises(ValueError, match="bwd_num_stages=0: pass a positive pipelining depth"):
    call(x, delta, scale, bwd_num_stages=0)
  with pytest.raises(ValueError, match="scale has shape"):  # the reference checks the same
    reference_add_rms_norm(x, delta, scale[:47], eps=EPS, out_dtype=jnp.bfloat16)


@pytest.mark.parametrize("with_delta", [True, False])
def test_lowers_to_triton_for_h200_without_a_gpu(with_delta):
  """Pallas -> Triton IR for the paper's shape, forward and backward (not compiled to PTX)."""
  device = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=132, platform="gpu")
  mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
  M, D, bf16 = 32768, 768, jnp.bfloat16
  tensor = jax.ShapeDtypeStruct((M, D), bf16)

  def step(x, delta, scale, d_sum, d_y):
    fn = lambda x, d, s: add_rms_norm(x, d if with_delta else None, s, eps=EPS, out_dtype=bf16)
    out, vjp = jax.vjp(fn, x, delta, scale)
    return out, vjp((d_sum, d_y))

  with jax.sharding.use_abstract_mesh(mesh):
    text = jax.jit(step).trace(tensor, tensor, jax.ShapeDtypeStruct((D,), jnp.float32), tensor,
                               tensor).lower(lowering_platforms=("cuda",)).as_text()
  assert text.count("__gpu$xla.gpu.triton") == 2
  assert f"grid_x = {M // rms_norm_gpu.BLOCK_ROWS}" in text  # forward: one program per block
  bwd_programs = M // (rms_norm_gpu.BLOCK_ROWS * rms_norm_gpu.BWD_ROW_BLOCKS)
  assert f"grid_x = {bwd_programs}" in text


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
@pytest.mark.parametrize("with_delta", [True, False])
def test_compiled_on_a_gpu_matches_reference(with_delta):
  """The compiled kernel at the paper's width in bf16 (4,096 rows), forward and gradients."""
  x, delta, scale, cts = _inputs((4, 1024, 768), jnp.bfloat16, seed=2)
  delta = delta if with_delta else None
  kernel = lambda x, d, s: add_rms_norm(x, d, s, eps=EPS, out_dtype=jnp.bfloat16)
  ref = lambda x, d, s: reference_add_rms_norm(x, d, s, eps=EPS, out_dtype=jnp.bfloat16)
  (s, y), grads = jax.jit(lambda *a: _grads(kernel, *a))(x, delta, scale, cts)
  (s_ref, y_ref), grads_ref = jax.jit(lambda *a: _grads(ref, *a))(x, delta, scale, cts)
  np.testing.assert_array_equal(_f64(s), _f64(s_ref))
  np.testing.assert_allclose(_f64(y), _f64(y_ref), atol=2 ** -6 * np.abs(_f64(y_ref)).max())
  y64, dx64, dscale64 = (a.reshape(b.shape) for a, b in zip(_numpy(s, scale, *cts),
                                                             (y, grads[0], scale)))
  np.testing.assert_allclose(_f64(y), y64, atol=2 ** -6 * np.abs(y64).max())
  np.testing.assert_allclose(_f64(grads[0]), dx64, atol=2 ** -6 * np.abs(dx64).max())
  np.testing.assert_allclose(_f64(grads[2]), dscale64, rtol=1e-4, atol=1e-4 * np.abs(dscale64).max())
  for g, w in zip(grads, grads_ref):
    if w is not None:
      np.testing.assert_allclose(_f64(g), _f64(w), atol=2 ** -5 * np.abs(_f64(w)).max())
