"""Times the Hopper backward's kernels alone and checks it against the Triton backward.

For each B,T,N,K,H (causal bf16) and each Settings variant: the forward, the whole backward
(delta prologue, dq/dc and dk/dv kernels), and each kernel's share (outputs of the other one
dropped, so XLA removes it), in ms and TFLOP/s counting 2.5x the forward's 4*B*N*T^2*H/2
for the backward. The gradients are compared with the Triton backward on the same residuals.

  python -m benchmarks.bench_mosaic_bwd --shapes='1,16384,16,16,128'
"""
import json
import math

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import median_s
from ssmax_jax.ops.attention import mosaic_gpu, mosaic_gpu_vjp, triton

FLAGS = flags.FLAGS
flags.DEFINE_string("shapes", "2,8192,16,16,128;1,16384,16,16,128;4,4096,16,4,128;"
                    "8,2048,12,12,64", "Semicolon-separated B,T,N,K,H.")
flags.DEFINE_string("variants", "", "Extra ';'-separated Settings as 6 comma-separated ints.")
flags.DEFINE_integer("iters", 20, "Timed calls (median).")


def main(argv):
  del argv
  variants = [mosaic_gpu.default_settings(128)] + [
      mosaic_gpu.Settings(*(int(x) for x in t.split(","))) for t in FLAGS.variants.split(";") if t]
  for shape in FLAGS.shapes.split(";"):
    B, T, N, K, H = (int(x) for x in shape.split(","))
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    q = jax.random.normal(keys[0], (B, T, N, H), jnp.bfloat16)
    k, v = (jax.random.normal(x, (B, T, K, H), jnp.bfloat16) for x in keys[1:3])
    do = jax.random.normal(keys[3], (B, T, N, H), jnp.bfloat16)
    c = jnp.broadcast_to(0.43 * jnp.log(jnp.arange(1, T + 1, dtype=jnp.float32))[None, :, None],
                         (B, T, N))
    scale = 1 / math.sqrt(H)
    flops = 4.0 * B * N * T * T * H / 2
    ref = None
    for tiles in variants:
      row = dict(B=B, T=T, N=N, K=K, H=H, tiles=str(tiles))
      try:
        fwd = jax.jit(lambda q, k, v, c: mosaic_gpu._forward(q, k, v, c, scale=scale,
                                                              causal=True, tiles=tiles))
        o, lse = fwd(q, k, v, c)
        row["fwd_ms"] = median_s(fwd, q, k, v, c, iters=FLAGS.iters) * 1e3
        bwd = lambda q, k, v, c, o, lse, do: mosaic_gpu_vjp.backward(
            q, k, v, c, o, lse, do, scale=scale, causal=True, tiles=tiles)
        parts = dict(bwd=lambda *a: bwd(*a), dq=lambda *a: bwd(*a)[0::3],
                     dkv=lambda *a: bwd(*a)[1:3])
        for name, f in parts.items():
          f = jax.jit(f)
          t = median_s(f, q, k, v, c, o, lse, do, iters=FLAGS.iters)
          row[f"{name}_ms"] = t * 1e3
          row[f"{name}_tflops"] = 2.5 * flops / t / 1e12
        row["fb_tflops"] = 3.5 * flops / (row["fwd_ms"] + row["bwd_ms"]) * 1e3 / 1e12
        got = jax.jit(bwd)(q, k, v, c, o, lse, do)
        if ref is None:
          q_pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
          cfg = triton._Static(scale, True, None, triton.default_settings(H), False)
          ref = jax.jit(lambda *a: triton.backward(*a, cfg))(
              q, k, v, c, q_pos, None, None, jnp.full((B,), T, jnp.int32), o, lse, do)
        for name, g, r in zip(("dq", "dk", "dv", "dc"), got, ref):
          g, r = (np.asarray(x.astype(jnp.float32)) for x in (g, r))
          row[f"{name}_relerr_vs_triton"] = float(np.abs(g - r).max() / np.abs(r).max())
      except Exception as e:  # noqa: BLE001 -- report and go on
        row["err"] = f"{type(e).__name__}: {str(e)[:400]}"
      print(json.dumps(row), flush=True)


if __name__ == "__main__":
  app.run(main)
