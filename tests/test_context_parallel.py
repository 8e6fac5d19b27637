"""Attention with the sequence sharded over a context axis of 4 simulated CPU devices equals the
unsharded op, values and gradients, with documents crossing the shard boundaries; training
with context sharding gives the losses of one device.

jax fixes its device count at import, so the sharded runs happen in subprocesses with
XLA_FLAGS set (4 devices: the op and two meshes; 8: the third mesh), meanwhile the one-device
reference trains here; each records its cases' results, or tracebacks, by name.
"""
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmax_jax import ops
from ssmax_jax.configs import test_tiny
from ssmax_jax.train import mesh as mesh_lib
from ssmax_jax.train import read_metrics, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("softmax", "ssmax", "ssmax_bias", "logit_multiplier")
MASKS = ("causal", "window")
ZIGZAG = ("ssmax_bias", "logit_multiplier")  # zigzag order: learned s, b and a given c
TRAIN_MESHES = {4: [(1, 1, 4, 1), (2, 1, 2, 1)], 8: [(1, 2, 2, 2)]}


def _config(shape=(1, 1, 1)):
  """The float32 test config with packed documents and SSMax on a mesh of `shape`."""
  c = test_tiny.get_config()
  c.train.update(num_steps=3, log_every=1, seq_len=64)
  c.data.packing = True
  c.checkpoint.update(every_steps=1000)
  c.mesh.shape = shape
  return c


_TRAIN = textwrap.dedent("""
    import contextlib, io, json, sys, traceback
    import jax
    from ssmax_jax.train import read_metrics, train
    from tests.test_context_parallel import TRAIN_MESHES, _config
    for shape in TRAIN_MESHES[jax.device_count()]:
      workdir, log = f"{sys.argv[1]}/{shape}".replace(" ", ""), io.StringIO()
      try:
        with contextlib.redirect_stdout(log):
          train(_config(shape), workdir)
        out[str(shape)] = dict(losses=[r["loss"] for r in read_metrics(workdir)],
                               log=log.getvalue())
      except Exception:
        out[str(shape)] = {"error": traceback.format_exc()[-3000:]}
""")

_SCRIPT = textwrap.dedent("""
    import json, traceback
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    from ssmax_jax import ops
    from tests.test_context_parallel import MASKS, VARIANTS, ZIGZAG
    B, T, N, K, H, C = 2, 32, 4, 2, 8, 4
    k = jax.random.split(jax.random.key(0), 6)
    q = jax.random.normal(k[0], (B, T, N, H))
    kv = [jax.random.normal(kk, (B, T, K, H)) for kk in k[1:3]]
    d_out = jax.random.normal(k[3], (B, T, N, H))
    c_BTN = 1.0 + jax.random.uniform(k[4], (B, T, N))
    # Documents of 5, 20, 7 and 13, 19 tokens: both rows cross the 8-token shard boundaries.
    seg = jnp.array([[0] * 5 + [1] * 20 + [2] * 7, [0] * 13 + [1] * 19])
    s, b = jnp.linspace(0.5, 1.5, N), jnp.linspace(-0.2, 0.3, N)
    mesh = jax.make_mesh((1, C, 1), ("data", "context", "tensor"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)

    def loss_fn(variant, masking, implementation=None, **extra):
      kw = dict(is_causal=masking == "causal", segment_ids=seg,
                local_window_size=(6, 3) if masking == "window" else None,
                implementation=implementation, **extra)
      def loss(q, k, v, s, b, c):
        kw_c = {"softmax": {}, "ssmax": dict(s=s), "ssmax_bias": dict(s=s, b=b),
                "logit_multiplier": dict(logit_multiplier=c)}[variant]
        o = ops.dot_product_attention(q, k, v, **kw, **kw_c)
        return jnp.sum(o * d_out), o
      return loss

    def value_and_grads(loss):
      g = jax.grad(loss, argnums=range(6), has_aux=True)
      return jax.jit(lambda: (loss(q, *kv, s, b, c_BTN)[1], g(q, *kv, s, b, c_BTN)))()

    def rel_errors(got, want):
      return [float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(y)) + 1e-30))
              for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want))]

    def under_mesh(variant, masking, implementation=None):
      want = value_and_grads(loss_fn(variant, masking))
      with jax.set_mesh(mesh):
        got = value_and_grads(loss_fn(variant, masking, implementation))
      return rel_errors(got, want)

    def zigzag(variant):
      # The caller's own shard_map: device i holds chunks i and 2C-1-i of the sequence.
      order = np.concatenate([np.r_[i * 4:(i + 1) * 4, (7 - i) * 4:(8 - i) * 4]
                              for i in range(C)])
      loss = loss_fn(variant, "causal")
      want = value_and_grads(loss)
      def body(q, k, v, pos, seg_z, s, b, c):
        o = ops.dot_product_attention(
            q, k, v, is_causal=True, segment_ids=seg_z, query_positions=pos,
            context_axis_name="context",
            **{"softmax": {}, "ssmax": dict(s=s), "ssmax_bias": dict(s=s, b=b),
               "logit_multiplier": dict(logit_multiplier=c)}[variant])
        return o
      tok = P(None, "context")
      sm = jax.shard_map(body, mesh=mesh, in_specs=(tok, tok, tok, tok, tok, P(), P(), tok),
                         out_specs=tok)
      def zloss(q, k, v, s, b, c):
        pos = jnp.broadcast_to(jnp.asarray(order), (B, T))
        o = sm(q[:, order], k[:, order], v[:, order], pos, seg[:, order], s, b, c[:, order])
        o = jnp.zeros_like(o).at[:, order].set(o)
        return jnp.sum(o * d_out), o
      return rel_errors(value_and_grads(zloss), want)

    def refusal():
      with jax.set_mesh(mesh):
        try:
          jax.jit(lambda: ops.dot_product_attention(q, *kv, mask=jnp.ones((T, T), bool)))()
        except ValueError as e:
          return str(e)
      return "no ValueError"

    def part(name, fn):
      try:
        out[name] = fn()
      except Exception:
        out[name] = {"error": traceback.format_exc()[-3000:]}

    for variant in VARIANTS:
      for masking in MASKS:
        part(f"{variant}_{masking}", lambda: under_mesh(variant, masking))
    for variant in ZIGZAG:
      part(f"zigzag_{variant}", lambda: zigzag(variant))
    part("pallas", lambda: under_mesh("ssmax", "causal", "pallas"))
    part("refusal", refusal)
""")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{case: result} of both subprocesses, and "one": the one-device losses."""
  tmp_path = tmp_path_factory.mktemp("context")
  procs = []
  for devices, script in ((4, "out = {}\n" + _SCRIPT + _TRAIN), (8, "out = {}\n" + _TRAIN)):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    script += "print(json.dumps(out))\n"
    procs.append(subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], env=env,
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True))
  out = {}
  try:
    train(_config(), str(tmp_path / "one"))
    out["one"] = [r["loss"] for r in read_metrics(str(tmp_path / "one"))]
    for proc in procs:
      stdout, stderr = proc.communicate(timeout=600)
      assert proc.returncode == 0, stderr[-3000:]
      out.update(json.loads(stdout.strip().splitlines()[-1]))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  return out


def _part(runs, name):
  got = runs[name]
  if isinstance(got, dict) and "error" in got:
    pytest.fail(f"{name} failed in the 4-device process:\n{got['error']}")
  return got


@pytest.mark.parametrize("masking", MASKS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_op_under_context_mesh_matches_unsharded(runs, variant, masking):
  errors = _part(runs, f"{variant}_{masking}")
  assert len(errors) == 8 and max(errors) < 1e-5, errors  # out twice; dq, dk, dv, ds, db, dc


@pytest.mark.parametrize("variant", ZIGZAG)
def test_op_in_own_shard_map_zigzag_matches_unsharded(runs, variant):
  errors = _part(runs, f"zigzag_{variant}")
  assert len(errors) == 8 and max(errors) < 1e-5, errors


def test_pallas_kernel_under_context_mesh_matches_unsharded(runs):
  errors = _part(runs, "pallas")
  assert max(errors) < 1e-4, errors


def test_dense_mask_under_context_mesh_is_an_error(runs):
  assert "bias and mask are dense" in _part(runs, "refusal")


def test_context_axis_name_needs_query_positions():
  q = jnp.zeros((1, 8, 2, 4))
  fn = jax.shard_map(lambda x: ops.dot_product_attention(x, x, x, context_axis_name="i"),
                     mesh=jax.make_mesh((1,), ("i",), axis_types=(jax.sharding.AxisType.Auto,)),
                     in_specs=jax.P(None, "i"), out_specs=jax.P(None, "i"))
  with pytest.raises(ValueError, match="needs query_positions"):
    jax.jit(fn)(q)


@pytest.mark.parametrize("shape", [s for shapes in TRAIN_MESHES.values() for s in shapes])
def test_context_sharded_training_matches_one_device(runs, shape):
  got = _part(runs, str(shape))
  assert len(runs["one"]) == 3 and runs["one"][-1] < runs["one"][0]
  np.testing.assert_allclose(got["losses"], runs["one"], atol=2e-4, err_msg=str(shape))


def test_logged_mesh_names_every_axis(runs):
  assert "mesh {'data': 1, 'fsdp': 2, 'context': 2, 'tensor': 2}" in _part(
      runs, "(1, 2, 2, 2)")["log"]


def test_three_entry_mesh_shape_is_data_fsdp_tensor():
  assert mesh_lib.mesh_shape((2, 1, 4), 8) == (2, 1, 1, 4)
  assert mesh_lib.mesh_shape((1, -1, 2, 2), 8) == (1, 2, 2, 2)
  with pytest.raises(ValueError, match="must be 4 sizes"):
    mesh_lib.mesh_shape((8, 1), 8)
