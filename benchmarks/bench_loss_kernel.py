"""The training loss's per-chunk work alone: log-sum-exp, target logit and (softmax - onehot) over
materialised logits [rows, vocab], by the Pallas kernel at several tile settings and by XLA.

  python -m benchmarks.bench_loss_kernel                                  # H200: 8,192 x 50,304
  python -m benchmarks.bench_loss_kernel --rows=64 --vocab=1000 --tiles=8:256:4 --steps=1
                                                                           # CPU (interpret mode)

Counted floor: the gradient needs the final normaliser, so the logits are read twice and the
gradient written once; GB/s below counts those bytes for every row (XLA included), so a row's
GB/s against the card's ~4.8 TB/s says how far each is from the floor. Each setting is checked
against XLA's result before it is timed.
"""
import jax
import jax.numpy as jnp
from absl import app
from absl import flags

from benchmarks.timing import max_abs_diff, mean_ms, parse_settings
from ssmax_jax.ops.cross_entropy import triton
from ssmax_jax.ops.cross_entropy.reference import xla_loss_and_grad

_ROWS = flags.DEFINE_integer("rows", 8192, "Rows (tokens of one loss chunk).")
_VOCAB = flags.DEFINE_integer("vocab", 50304, "Columns (GPT-2's 50,257 padded to 64).")
_REAL_VOCAB = flags.DEFINE_integer("real_vocab", 50257, "Columns that are not padding.")
_DTYPES = flags.DEFINE_list("dtypes", ["bfloat16", "float32"], "Logits dtypes.")
_TILES = flags.DEFINE_list("tiles", ["1:2048:4", "1:1024:2", "1:1024:4", "4:1024:4", "1:4096:8",
                                     "1:2048:2", "1:2048:4:3", "1:2048:4:4"],
                           "Kernel settings block_rows:block_vocab:num_warps[:num_stages] "
                           f"(num_stages default {triton.NUM_STAGES}).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed calls after one warm-up.")


def main(argv):
  del argv
  M, V, real = _ROWS.value, _VOCAB.value, min(_REAL_VOCAB.value, _VOCAB.value)
  tiles = parse_settings(_TILES.value, ("block_rows", "block_vocab", "num_warps", "num_stages"),
                         "8:1024:8", rows=M, defaults=(triton.NUM_STAGES,))
  interpret = jax.default_backend() == "cpu"
  k = jax.random.split(jax.random.key(0), 3)
  targets = jax.random.randint(k[1], (M,), 0, real)
  weights = (jax.random.uniform(k[2], (M,)) > 0.1).astype(jnp.float32)
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, logits {M} x {V} "
        f"({real} real columns){', interpret mode' if interpret else ''}", flush=True)
  rows = []
  for dtype in map(jnp.dtype, _DTYPES.value):
    logits = (4 * jax.random.normal(k[0], (M, V), jnp.float32)).astype(dtype)
    counted = M * V * dtype.itemsize * 3  # two reads of the logits, one write of the gradient
    xla = jax.jit(lambda x, t, w, dtype=dtype: xla_loss_and_grad(x, t, w, real, dtype))
    want = jax.block_until_ready(xla(logits, targets, weights))
    ms = mean_ms(xla, logits, targets, weights, steps=_STEPS.value)
    rows.append((dtype.name, "XLA", ms, counted / ms / 1e6, 0.0))
    for block_rows, block_vocab, warps, stages in tiles:
      fn = jax.jit(lambda x, t, w, br=block_rows, bv=block_vocab, nw=warps, ns=stages,
                   dtype=dtype: triton.cross_entropy_with_grad(
                       x, t, w, vocab_size=real, grad_dtype=dtype, block_rows=br,
                       block_vocab=bv, num_warps=nw, num_stages=ns, interpret=interpret))
      got = fn(logits, targets, weights)
      err = max_abs_diff(got, want)
      ms = mean_ms(fn, logits, targets, weights, steps=_STEPS.value)
      rows.append((dtype.name, f"kernel {block_rows}:{block_vocab}:{warps}:{stages}", ms,
                   counted / ms / 1e6, err))
      print(f"{rows[-1][0]} {rows[-1][1]}: {ms:.3f} ms", flush=True)
  print("\n| logits | implementation (rows:vocab:warps:stages) | ms | GB/s counted | max abs "
        "diff vs XLA |\n|---|---|---|---|---|")
  for dtype, name, ms, gbs, err in rows:
    print(f"| {dtype} | {name} | {ms:.3f} | {gbs:,.0f} | {err:.2e} |")
  floor = {d: M * V * jnp.dtype(d).itemsize * 3 / 4.8e12 * 1e3 for d in _DTYPES.value}
  print("floor at 4.8 TB/s: " + ", ".join(f"{d} {ms:.3f} ms" for d, ms in floor.items()))


if __name__ == "__main__":
  app.run(main)
