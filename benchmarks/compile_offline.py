"""Compiles the paper model's train step for an H200 on a machine without a GPU, and counts the
traffic of its memory-bound kernels (benchmarks.hlo_analysis.kernel_traffic).

XLA makes the same fusion decisions here as on the device (the paper step's kernels match a
compile on the H200 one for one, cuBLAS workspace sizes aside: no autotuning here), so a rewrite
of the step can be counted before it costs device time. Needs JAX's CUDA plugin in the
environment, no GPU (docs/dev/workspace.md):

  python -m benchmarks.compile_offline --out=/tmp/after.hlo --compare=/tmp/before.hlo
"""
import glob
import os
import tempfile

from absl import app
from absl import flags

_OUT = flags.DEFINE_string("out", "/tmp/ssmax_step.hlo", "Where to write the compiled HLO.")
_COMPARE = flags.DEFINE_string("compare", "", "An earlier --out: also print its traffic and the "
                               "kernels whose counts differ.")
_ATTENTION = flags.DEFINE_string("attention", "ssmax", "model.attention.")
_BATCH = flags.DEFINE_integer("batch", 32, "Sequences per step (of 1,024 tokens).")
_CHUNK = flags.DEFINE_integer("chunk", 0, "train.loss_chunk_tokens; 0 keeps the config's.")
_TOP = flags.DEFINE_integer("top", 15, "Kernels listed.")
_THIN = flags.DEFINE_integer("thin", 8, "Also list this many large XLA kernels with the fewest "
                             "elements per thread (from XLA's launch dimensions).")

# XLA's H100 SXM spec (xla/tools/hlo_opt/gpu_specs) with the H200's memory and bandwidth.
H200 = """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132
  fpus_per_core: 128 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 memory_bandwidth: 4800000000000 l2_cache_size: 52428800
  clock_rate_ghz: 1.98 device_memory_size: 150000000000 shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 } registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 28 patch: 1 }
runtime_version { major: 13 minor: 0 }
device_description_str: "NVIDIA H200"
"""


def compile_step(config):
  """(optimized HLO text, memory_analysis()) of `config`'s train step on one compile-only H200."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.experimental import topologies

  from ssmax_jax.train import mesh as mesh_lib
  from ssmax_jax.train import trainer
  from ssmax_jax.train.config import validate
  from ssmax_jax.train.optim import make_optimizer

  jax.config.update("jax_platforms", "cpu")
  topology = topologies.get_topology_desc(platform="cuda", target_config=H200, topology="1x1x1")
  # The library picks its GPU kernels (cuDNN attention, the Pallas loss and norm) by asking
  # jax.default_backend(), which is the CPU here.
  jax.default_backend = lambda: "gpu"
  mesh = jax.sharding.Mesh(np.array(topology.devices).reshape(
      (1,) * len(mesh_lib.MESH_AXES)), mesh_lib.MESH_AXES,
      axis_types=(jax.sharding.AxisType.Auto,) * len(mesh_lib.MESH_AXES))  # as mesh_lib's
  tx = make_optimizer(config.optimizer, config.train.num_steps)
  _, graphdef, abstract, shardings = trainer.abstract_state(validate(config), tx, mesh,
                                                            config.seed)
  shardings = jax.tree.leaves(shardings)
  leaves, treedef = jax.tree.flatten(abstract)
  leaves = [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s) for x, s in zip(leaves, shardings)]
  step = trainer.train_step_fn(graphdef, treedef, shardings, mesh, config)
  B, T, rows = config.train.batch_size, config.train.seq_len, mesh_lib.batch_sharding(mesh)
  batch = {k: jax.ShapeDtypeStruct((B, T), jnp.float32 if k == "loss_mask" else jnp.int32,
                                   sharding=rows)
           for k in ("inputs", "targets", "segment_ids", "positions", "loss_mask")}
  with jax.set_mesh(mesh):
    compiled = step.lower(leaves, batch).compile()
  return compiled.as_text(), compiled.memory_analysis()


def main(argv):
  del argv
  from benchmarks import hlo_analysis
  from ssmax_jax.configs import paper_162m
  from ssmax_jax.train import config as config_lib

  config = paper_162m.get_config()
  config.model.attention = _ATTENTION.value
  config.train.update(batch_size=_BATCH.value, grad_accum_steps=1)
  if _CHUNK.value:
    config.train.loss_chunk_tokens = _CHUNK.value
  config.mesh.shape = (1, 1, 1)
  dump = tempfile.mkdtemp(prefix="compile_offline_")  # XLA's thunk sequence: launch dimensions
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={dump}".strip()
  config_lib.apply_xla_flags(config)  # before JAX starts a backend
  text, memory = compile_step(config)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, "w") as f:
    f.write(text)
  print(f"{_OUT.value}\n"
        + hlo_analysis.format_traffic(hlo_analysis.kernel_traffic(text), _TOP.value))
  # The state is donated, so its buffers are reused for the outputs: arguments + temporaries.
  print(f"device memory: {memory.argument_size_in_bytes / 2**30:.2f} GiB of state and batch, "
        f"{memory.temp_size_in_bytes / 2**30:.2f} GiB of temporaries")
  thunks = sorted(glob.glob(os.path.join(dump, "*jit_step*thunk_sequence.txt")))
  if thunks and _THIN.value:
    with open(thunks[0]) as f:
      thin = hlo_analysis.elements_per_thread(text, f.read())
    print("\n| kernel | launches | elements | threads | elements per thread |\n"
          "|---|---|---|---|---|")
    for name, elements, threads, count in thin[:_THIN.value]:
      print(f"| `{name}` | {count} | {elements:,} | {threads:,} | {elements / threads:.1f} |")
  if _COMPARE.value:
    with open(_COMPARE.value) as f:
      before = f.read()
    print(f"\n{_COMPARE.value}\n"
          + hlo_analysis.format_traffic(hlo_analysis.kernel_traffic(before), _TOP.value))
    was, now = (hlo_analysis.program_lines(t) for t in (before, text))
    print("the same program as --compare (source locations and Pallas bodies aside)"
          if was == now else f"programs differ: {len(set(was) ^ set(now))} lines")
    old, new = (hlo_analysis.kernel_traffic(t, skip=()) for t in (before, text))
    print("\n| kernel | before: kernels, GB | now: kernels, GB |\n|---|---|---|")
    for name in sorted(set(old) | set(new)):
      (ob, ok), (nb, nk) = old.get(name, (0, 0)), new.get(name, (0, 0))
      if ok != nk or ob != nb:
        print(f"| `{name[:60]}` | {ok}, {ob / 1e9:.3f} | {nk}, {nb / 1e9:.3f} |")


if __name__ == "__main__":
  app.run(main)
