"""The residual add + RMSNorm alone, forward and forward + backward, by the Pallas kernel at
several tile settings and by XLA (the paper step runs it 25 times: 12 blocks x 2 norms + final).

  python -m benchmarks.bench_norm_kernel                               # H200: 32,768 x 768 bf16
  python -m benchmarks.bench_norm_kernel --rows=64 --width=96 --tiles=8:4:2 --steps=1   # CPU

Counted floor, in tensors of [rows, width]: the forward reads x and delta and writes the sum
and the norm (4); the backward reads the sum, d_y and d_sum and writes d_x (4). GB/s below counts
those bytes for every row (XLA included), against the card's ~4.8 TB/s. Each setting is checked
against XLA's outputs and gradients before it is timed.
"""
import jax
import jax.numpy as jnp
from absl import app
from absl import flags

from benchmarks.timing import max_abs_diff, mean_ms, parse_settings
from ssmax_jax.ops.rms_norm import reference, triton

_ROWS = flags.DEFINE_integer("rows", 32768, "Rows (tokens of one step).")
_WIDTH = flags.DEFINE_integer("width", 768, "Model width D.")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "Residual stream dtype.")
# 4:4:4 is the default; the others hold fewer values per thread (rows x 1024 / (32 x warps)),
# the backward's likely limit (it keeps six [rows, 1024] float32 tiles live; not profiled).
_TILES = flags.DEFINE_list("tiles", ["4:4:4", "4:8:1", "4:8:4", "2:4:2", "2:8:4", "1:4:4",
                                     "8:8:2", "4:4:4:2", "4:4:8:2", "4:4:8:3", "2:4:8:3"],
                           "Kernel settings block_rows:num_warps:bwd_row_blocks[:bwd_num_stages] "
                           f"(bwd_num_stages default {triton.BWD_NUM_STAGES}).")
_STEPS = flags.DEFINE_integer("steps", 50, "Timed calls after one warm-up.")
EPS = 1e-6


def _fwd_bwd(norm):
  """jit of (sum, y, d_x, d_delta, d_scale) at fixed cotangents: the training step's work."""
  def f(x, delta, scale, d_sum, d_y):
    out, vjp = jax.vjp(norm, x, delta, scale)
    return out + vjp((d_sum, d_y))
  return jax.jit(f)


def main(argv):
  del argv
  M, D, dtype = _ROWS.value, _WIDTH.value, jnp.dtype(_DTYPE.value)
  tiles = parse_settings(_TILES.value, ("block_rows", "num_warps", "bwd_row_blocks",
                                        "bwd_num_stages"), "4:4:4", rows=M,
                         defaults=(triton.BWD_NUM_STAGES,))
  interpret = jax.default_backend() == "cpu"
  k = jax.random.split(jax.random.key(0), 5)
  x, delta, d_sum, d_y = (jax.random.normal(kk, (M, D)).astype(dtype) for kk in k[:4])
  scale = 1.0 + 0.1 * jax.random.normal(k[4], (D,))
  args = (x, delta, scale, d_sum, d_y)
  tensor = M * D * dtype.itemsize
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {M} x {D} {dtype.name}"
        f"{', interpret mode' if interpret else ''}", flush=True)

  def measure(name, norm, want=None):
    fwd = jax.jit(lambda x, d, s: norm(x, d, s))
    both = _fwd_bwd(norm)
    got = both(*args)
    err = 0.0 if want is None else max_abs_diff(got, want)
    fwd_ms = mean_ms(fwd, x, delta, scale, steps=_STEPS.value)
    both_ms = mean_ms(both, *args, steps=_STEPS.value)
    rows.append((name, fwd_ms, 4 * tensor / fwd_ms / 1e6, both_ms, 8 * tensor / both_ms / 1e6,
                 err))
    print(f"{name}: forward {fwd_ms:.4f} ms, forward + backward {both_ms:.4f} ms", flush=True)
    return got

  rows = []
  want = measure("XLA", lambda x, d, s: reference.reference_add_rms_norm(
      x, d, s, eps=EPS, out_dtype=dtype))
  for block_rows, warps, row_blocks, stages in tiles:
    measure(f"kernel {block_rows}:{warps}:{row_blocks}:{stages}",
            lambda x, d, s, br=block_rows, nw=warps, rb=row_blocks, ns=stages:
            triton.add_rms_norm(x, d, s, eps=EPS, out_dtype=dtype, block_rows=br,
                                      num_warps=nw, bwd_row_blocks=rb, bwd_num_stages=ns,
                                      interpret=interpret), want)
  print("\n| implementation (rows:warps:bwd blocks:bwd stages) | forward ms | GB/s | forward + "
        "backward ms | GB/s | max abs diff vs XLA |\n|---|---|---|---|---|---|")
  for name, f_ms, f_gbs, b_ms, b_gbs, err in rows:
    print(f"| {name} | {f_ms:.4f} | {f_gbs:,.0f} | {b_ms:.4f} | {b_gbs:,.0f} | {err:.2e} |")
  print(f"floor at 4.8 TB/s: forward {4 * tensor / 4.8e9:.4f} ms, forward + backward "
        f"{8 * tensor / 4.8e9:.4f} ms")


if __name__ == "__main__":
  app.run(main)
