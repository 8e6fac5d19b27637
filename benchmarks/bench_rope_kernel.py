"""RoPE's transpose on the q and k gradients, written stacked, alone: the Pallas kernel at
several tile settings against XLA (the paper step runs it once per layer, 12 times).

  python -m benchmarks.bench_rope_kernel                        # H200: 32 x 1,024 rows, 12 x 64
  python -m benchmarks.bench_rope_kernel --batch=2 --seq=16 --heads=2 --tiles=8:4 --steps=1  # CPU

Counted floor: read g_q and g_k, write the stacked gradient (4 arrays of [rows, heads x H]),
plus cos and sin [rows, H/2] float32; GB/s below counts those bytes, against the card's ~4.8
TB/s. Each setting is checked against XLA's output before it is timed.
"""
import jax
import jax.numpy as jnp
from absl import app
from absl import flags

from benchmarks.timing import max_abs_diff, mean_ms, parse_settings
from ssmax_jax.ops.rope import reference, triton
from ssmax_jax.nn.layers import rope_cos_sin

_BATCH = flags.DEFINE_integer("batch", 32, "Sequences.")
_SEQ = flags.DEFINE_integer("seq", 1024, "Tokens per sequence.")
_HEADS = flags.DEFINE_integer("heads", 12, "Heads N (of q and of k).")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "Head dimension H.")
_TILES = flags.DEFINE_list("tiles", ["16:4", "8:4", "32:4", "32:8", "64:8", "4:2"],
                           "Kernel settings block_rows:num_warps.")
_STEPS = flags.DEFINE_integer("steps", 50, "Timed calls after one warm-up.")


def main(argv):
  del argv
  B, T, N, H = _BATCH.value, _SEQ.value, _HEADS.value, _HEAD_DIM.value
  M = B * T
  tiles = parse_settings(_TILES.value, ("block_rows", "num_warps"), "16:4", rows=M)
  interpret = jax.default_backend() == "cpu"
  k = jax.random.split(jax.random.key(0), 2)
  g_q, g_k = (jax.random.normal(kk, (B, T, N, H)).astype(jnp.bfloat16) for kk in k)
  cos, sin = rope_cos_sin(jnp.broadcast_to(jnp.arange(T), (B, T)), 10000.0, H)
  args = (g_q, g_k, cos, sin)
  nbytes = 4 * M * N * H * 2 + 2 * M * (H // 2) * 4
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, [{B}, {T}, {N}, {H}] bf16"
        f"{', interpret mode' if interpret else ''}", flush=True)
  rows = []

  def measure(name, fn, want=None):
    fn = jax.jit(fn)
    got = fn(*args)
    err = 0.0 if want is None else max_abs_diff([got], [want])
    ms = mean_ms(fn, *args, steps=_STEPS.value)
    rows.append((name, ms, nbytes / ms / 1e6, err))
    print(f"{name}: {ms:.4f} ms", flush=True)
    return got

  want = measure("XLA", reference.reference_rotate_back_stacked)
  for block_rows, warps in tiles:
    measure(f"kernel {block_rows}:{warps}",
            lambda *a, br=block_rows, nw=warps: triton.rotate_back_stacked(
                *a, block_rows=br, num_warps=nw, interpret=interpret), want)
  print("\n| implementation (rows:warps) | ms | GB/s | max abs diff vs XLA |\n|---|---|---|---|")
  for name, ms, gbs, err in rows:
    print(f"| {name} | {ms:.4f} | {gbs:,.0f} | {err:.2e} |")


if __name__ == "__main__":
  app.run(main)
