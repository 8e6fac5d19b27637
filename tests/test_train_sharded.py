"""Sharded training on 8 simulated CPU devices gives the losses of one device.

jax fixes its device count at import, and other tests import it first, so the 8-device runs
happen in a subprocess with XLA_FLAGS set.
"""
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs import test_tiny
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
    assert spec == P(("data", "fsdp"), None, None), spec
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
    assert spec == P(("data", "fsdp"), None, "tensor", None), spec
    got = jax.jit(lambda: ops.rotate_back_stacked(g_q, g_k, cos, sin, spec=spec,
                                                  implementation="pallas"))()
  return float(jnp.max(jnp.abs(got - want)))


_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    from tests.test_train_sharded import (MESHES, _config, norm_grads_under_mesh,
                                          rope_grads_under_mesh)
    from ssmax_jax.train import read_metrics, train
    assert jax.device_count() == 8, jax.devices()
    out = {}
    # What 'auto' picks on a GPU under these meshes, for logits over a vocabulary of 264 with
    # one and with 1 + 1/BLOCK_ROWS of the kernel's row blocks per device. First, while no
    # training run has left threads behind: once, after the runs below, it saw no mesh.
    from ssmax_jax.kernels import cross_entropy_gpu
    from ssmax_jax.train import mesh as mesh_lib
    from ssmax_jax.train.loss import resolve_implementation
    default_rows, cross_entropy_gpu.BLOCK_ROWS = cross_entropy_gpu.BLOCK_ROWS, 2
    for shape in [(4, 2, 1), (1, 1, 8), (8, 1, 1)]:
      with jax.set_mesh(mesh_lib.make_mesh(shape)):
        out[f"auto_{shape}"] = [resolve_implementation("auto", rows, 264, backend="gpu")
                                for rows in (16, 24)]  # 2 and 3 rows on each of 8 devices
    cross_entropy_gpu.BLOCK_ROWS = default_rows
    for name, shape in MESHES.items():
      config = _config()
      config.mesh.shape = shape
      train(config, f"{sys.argv[1]}/{name}")
      out[name] = [r["loss"] for r in read_metrics(f"{sys.argv[1]}/{name}")]
    # The Pallas loss kernel (interpret mode here) on each device's rows of a data x fsdp mesh.
    config = _config()
    config.mesh.shape = (4, 2, 1)
    config.train.loss_implementation = "pallas"
    train(config, f"{sys.argv[1]}/pallas_loss")
    out["pallas_loss"] = [r["loss"] for r in read_metrics(f"{sys.argv[1]}/pallas_loss")]
    config.mesh.shape = (1, 1, 8)
    try:
      train(config, f"{sys.argv[1]}/pallas_tensor")
    except ValueError as e:
      out["pallas_tensor"] = str(e)
    # The Pallas norm (interpret mode) on each device's rows, replicated over the tensor axis.
    config = _config()
    config.mesh.shape = (2, 2, 2)
    config.model.norm_implementation = "pallas"
    train(config, f"{sys.argv[1]}/pallas_norm")
    out["pallas_norm"] = [r["loss"] for r in read_metrics(f"{sys.argv[1]}/pallas_norm")]
    out["norm_grads"] = norm_grads_under_mesh((2, 2, 2))
    out["rope_grads"] = rope_grads_under_mesh((2, 2, 2))
    config = _config()
    config.train.batch_size = 4
    try:
      train(config, f"{sys.argv[1]}/bad_batch")
    except ValueError as e:
      out["bad_batch"] = str(e)
    print(json.dumps(out))
""")


def test_sharded_losses_match_one_device(tmp_path):
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
  sharded = json.loads(stdout.strip().splitlines()[-1])
  want = [r["loss"] for r in read_metrics(str(tmp_path / "one"))]
  assert len(want) == 3 and want[-1] < want[0]
  for name in MESHES:
    np.testing.assert_allclose(sharded[name], want, rtol=2e-5, err_msg=name)
  np.testing.assert_allclose(sharded["pallas_loss"], want, rtol=1e-4, err_msg="pallas loss")
  assert "splits the vocabulary over 8 tensor shards" in sharded["pallas_tensor"]
  # 'auto' on a GPU: the kernel with whole row blocks and whole vocabulary rows on each device.
  assert sharded["auto_(4, 2, 1)"] == ["pallas", "xla"]
  assert sharded["auto_(8, 1, 1)"] == ["pallas", "xla"]
  assert sharded["auto_(1, 1, 8)"] == ["xla", "xla"]
  np.testing.assert_allclose(sharded["pallas_norm"], want, rtol=1e-4, err_msg="pallas norm")
  # sum, y, d_x, d_delta, d_scale (summed over the devices' rows by shard_map's transpose)
  assert max(sharded["norm_grads"]) < 1e-4, sharded["norm_grads"]
  assert sharded["rope_grads"] < 1e-5, sharded["rope_grads"]  # rows and heads split 4 x 2
  assert "batch_size=4 must be divisible" in sharded["bad_batch"]
  assert "data x fsdp = 8" in sharded["bad_batch"]

  # A checkpoint written by 8 devices restores on one.
  mixed, _ = load_model(str(tmp_path / "mix"))
  single, _ = load_model(str(tmp_path / "one"))
  for a, b in zip(jax.tree.leaves(nnx.state(mixed)), jax.tree.leaves(nnx.state(single))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
