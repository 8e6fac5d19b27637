"""Sharded training on 8 simulated CPU devices gives the losses of one device.

jax fixes its device count at import, and other tests import it first, so the 8-device runs
happen in a subprocess with XLA_FLAGS set. It runs once per module (the `runs` fixture) and
records each part's result or traceback by name, so that a failing test names the part that broke.
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
from flax import nnx

from ssmax_jax.configs import test_tiny
from ssmax_jax.train import load_model, read_metrics, train

MESHES = {"data": (8, 1, 1), "fsdp": (1, 8, 1), "tensor": (1, 1, 8), "mix": (2, 2, 2)}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  c = test_tiny.get_config()
  # 8 heads and a vocabulary padded to 264 so that every axis of size 8 divides something.
  c.model.update(d_model=64, num_heads=8, d_ff=128, vocab_pad_multiple=8)
  c.train.update(num_steps=3, log_every=1)
  c.checkpoint.update(every_steps=1000)
  return c


def norm_grads_under_mesh(mesh_shape):
  """Largest difference of the residual add + RMSNorm op's outputs and gradients (x, delta,
  scale) between the Pallas kernel on each device's rows under `mesh_shape` and XLA on one
  device; the kernel's rows follow the batch over data x fsdp, replicated over tensor."""
  from jax.sharding import PartitionSpec as P
  from ssmax_jax import ops
  from ssmax_jax.nn.partitioning import activation_spec
  from ssmax_jax.train import mesh as mesh_lib
  k = jax.random.split(jax.random.key(0), 5)
  x, delta, d_sum, d_y = (jax.random.normal(kk, (8, 4, 48)) for kk in k[:4])
  scale = 1.0 + jax.random.normal(k[4], (48,))

  def grads(implementation, spec):
    fn = lambda x, d, s: ops.add_rms_norm(x, d, s, eps=1e-6, out_dtype=jnp.float32,
                                          implementation=implementation, spec=spec)
    out, vjp = jax.vjp(fn, x, delta, scale)
    return out + vjp((d_sum, d_y))

  want = jax.jit(lambda: grads("xla", None))()
  with jax.set_mesh(mesh_lib.make_mesh(mesh_shape)):
    spec = activation_spec(x.shape, ("act_batch", "act_seq", "act_embed"))
    assert spec == P(("data", "fsdp"), "context", None), spec
    got = jax.jit(lambda: grads("pallas", spec))()
  return [float(jnp.max(jnp.abs(a - b))) for a, b in zip(got, want)]


def rope_grads_under_mesh(mesh_shape):
  """Largest difference of the stacked RoPE transpose (ops.rotate_back_stacked) between the
  Pallas kernel on each device's rows and heads under `mesh_shape` and XLA on one device."""
  from jax.sharding import PartitionSpec as P
  from ssmax_jax import ops
  from ssmax_jax.nn.layers import rope_cos_sin
  from ssmax_jax.nn.partitioning import activation_spec
  from ssmax_jax.train import mesh as mesh_lib
  k = jax.random.split(jax.random.key(1), 2)
  g_q, g_k = (jax.random.normal(kk, (8, 16, 8, 16)) for kk in k)
  cos, sin = rope_cos_sin(jnp.broadcast_to(jnp.arange(16), (8, 16)), 10000.0, 16)
  want = jax.jit(lambda: ops.rotate_back_stacked(g_q, g_k, cos, sin, implementation="xla"))()
  with jax.set_mesh(mesh_lib.make_mesh(mesh_shape)):
    spec = activation_spec(g_q.shape, ("act_batch", "act_seq", "act_heads", "act_head_dim"))
    assert spec == P(("data", "fsdp"), "context", "tensor", None), spec
    got = jax.jit(lambda: ops.rotate_back_stacked(g_q, g_k, cos, sin, spec=spec,
                                                  implementation="pallas"))()
  return float(jnp.max(jnp.abs(got - want)))


_SCRIPT = textwrap.dedent("""
    import json, sys, traceback
    import jax
    from tests.test_train_sharded import (MESHES, _config, norm_grads_under_mesh,
                                          rope_grads_under_mesh)
    from ssmax_jax.train import read_metrics, train
    assert jax.device_count() == 8, jax.devices()
    out = {}

    def part(name, fn):  # each part's failure is recorded under its name; the others still run
      try:
        out[name] = fn()
      except Exception:
        out[name] = {"error": traceback.format_exc()[-3000:]}

    def losses(name, config):
      train(config, f"{sys.argv[1]}/{name}")
      return [r["loss"] for r in read_metrics(f"{sys.argv[1]}/{name}")]

    def error(name, config):
      try:
        train(config, f"{sys.argv[1]}/{name}")
      except ValueError as e:
        return str(e)
      return "no ValueError"

    def with_mesh(shape, **model):
      config = _config()
      config.mesh.shape = shape
      config.model.update(**model)
      return config

    # What None picks on a GPU under these meshes, for logits over a vocabulary of 264 with
    # one and with 1 + 1/BLOCK_ROWS of the kernel's row blocks per device. First, while no
    # training run has left threads behind: once, after the runs below, it saw no mesh.
    from ssmax_jax.nn.partitioning import activation_spec
    from ssmax_jax.ops import _dispatch
    from ssmax_jax.ops.cross_entropy import api as loss_api, triton as loss_kernel
    from ssmax_jax.train import mesh as mesh_lib

    def auto(shape):
      with jax.set_mesh(mesh_lib.make_mesh(shape)):
        spec = activation_spec((8, 1, 264), ("act_batch", "act_seq", "act_vocab"))
        return [loss_api._choose(None, 8, t, spec) for t in (2, 3)]  # 2, 3 rows per device

    default_rows, loss_kernel.BLOCK_ROWS = loss_kernel.BLOCK_ROWS, 2
    platform, _dispatch.platform = _dispatch.platform, lambda: "gpu"
    for shape in [(4, 2, 1), (1, 1, 8), (8, 1, 1)]:
      part(f"auto_{shape}", lambda: auto(shape))
    loss_kernel.BLOCK_ROWS, _dispatch.platform = default_rows, platform
    for name, shape in MESHES.items():
      part(name, lambda: losses(name, with_mesh(shape)))
    # The Pallas loss kernel (interpret mode here) on each device's rows of a data x fsdp mesh.
    def pallas_loss_config(shape):
      config = with_mesh(shape)
      config.train.loss_implementation = "pallas"
      return config

    part("pallas_loss", lambda: losses("pallas_loss", pallas_loss_config((4, 2, 1))))
    part("pallas_tensor", lambda: error("pallas_tensor", pallas_loss_config((1, 1, 8))))
    # The Pallas norm (interpret mode) on each device's rows, replicated over the tensor axis.
    part("pallas_norm", lambda: losses("pallas_norm",
                                       with_mesh((2, 2, 2), norm_implementation="pallas")))
    part("norm_grads", lambda: norm_grads_under_mesh((2, 2, 2)))
    part("rope_grads", lambda: rope_grads_under_mesh((2, 2, 2)))
    bad_batch = _config()
    bad_batch.train.batch_size = 4
    part("bad_batch", lambda: error("bad_batch", bad_batch))
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Trains once for the whole module: every 8-device part in one subprocess, the one-device
  reference meanwhile in this process. Returns (parts by name, one-device losses, workdir)."""
  tmp_path = tmp_path_factory.mktemp("sharded")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  proc = subprocess.Popen([sys.executable, "-c", _SCRIPT, str(tmp_path)], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    train(_config(), str(tmp_path / "one"))  # meanwhile, on this process's one device
    stdout, stderr = proc.communicate(timeout=600)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, stderr[-3000:]
  parts = json.loads(stdout.strip().splitlines()[-1])
  return parts, [r["loss"] for r in read_metrics(str(tmp_path / "one"))], tmp_path


def _part(runs, name):
  """The subprocess's result for one part; its traceback if that part raised."""
  got = runs[0][name]
  if isinstance(got, dict) and "error" in got:
    pytest.fail(f"{name} failed in the 8-device process:\n{got['error']}")
  return got


def test_one_device_reference_trains(runs):
  want = runs[1]
  assert len(want) == 3 and want[-1] < want[0]


@pytest.mark.parametrize("name", list(MESHES))
def test_mesh_losses_match_one_device(runs, name):
  np.testing.assert_allclose(_part(runs, name), runs[1], rtol=2e-5, err_msg=name)


def test_pallas_loss_on_data_x_fsdp_matches_one_device(runs):
  np.testing.assert_allclose(_part(runs, "pallas_loss"), runs[1], rtol=1e-4,
                             err_msg="pallas loss")


def test_pallas_loss_over_tensor_shards_is_an_error(runs):
  assert "splits the vocabulary over 8 tensor shards" in _part(runs, "pallas_tensor")


@pytest.mark.parametrize("shape, want", [
    ((4, 2, 1), ["triton", "xla"]), ((8, 1, 1), ["triton", "xla"]), ((1, 1, 8), ["xla", "xla"])],
    ids=["data_fsdp", "data", "tensor"])
def test_auto_loss_on_gpu_needs_whole_row_blocks_and_vocabulary_rows(runs, shape, want):
  # None on a GPU: the kernel with whole row blocks and whole vocabulary rows on each device.
  assert _part(runs, f"auto_{shape}") == want


def test_pallas_norm_matches_one_device(runs):
  np.testing.assert_allclose(_part(runs, "pallas_norm"), runs[1], rtol=1e-4,
                             err_msg="pallas norm")


def test_norm_kernel_gradients_under_mesh(runs):
  # sum, y, d_x, d_delta, d_scale (summed over the devices' rows by shard_map's transpose)
  norm_grads = _part(runs, "norm_grads")
  assert max(norm_grads) < 1e-4, norm_grads


def test_rope_kernel_gradients_under_mesh(runs):
  rope_grads = _part(runs, "rope_grads")
  assert rope_grads < 1e-5, rope_grads  # rows and heads split 4 x 2


def test_batch_not_divisible_by_the_mesh_is_an_error(runs):
  bad_batch = _part(runs, "bad_batch")
  assert "batch_size=4 must be divisible" in bad_batch
  assert "data x fsdp = 8" in bad_batch


def test_checkpoint_of_8_devices_restores_on_one(runs):
  _part(runs, "mix")
  mixed, _ = load_model(str(runs[2] / "mix"))
  single, _ = load_model(str(runs[2] / "one"))
  for a, b in zip(jax.tree.leaves(nnx.state(mixed)), jax.tree.leaves(nnx.state(single))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
