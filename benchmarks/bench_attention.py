"""GPU benchmark: our fused-multiplier flash kernels against cuDNN, tokamax and XLA.

Causal bf16 attention, B,T,N,H layout. SSMax rows use c = s_h*log(n), n = i+1; anchors fold
c into q first (what a user can do without a fused kernel). Each row: forward and
forward+backward (grad of q, k, v and, for SSMax, s) median of 20 calls, TFLOP/s counting
4*B*N*T^2*H/2 (forward) and 3.5x that (forward+backward), the compiled temporary bytes, and
the process's peak device bytes so far. Our outputs are checked against cuDNN at each shape
before timing. Prints a markdown table last and writes the rows as JSON to --out_json.

  python -m benchmarks.bench_attention --out_json=/tmp/bench.json
"""
import dataclasses
import json
import math
import sys
import traceback
import types

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import median_s
from ssmax_jax.ops.attention import triton

FLAGS = flags.FLAGS
flags.DEFINE_string("out_json", None, "Write the result rows here as JSON.")
flags.DEFINE_string("shapes", "8,2048,12,64;4,4096,16,128;2,8192,16,128;1,16384,16,128;"
                    "1,32768,12,64", "Semicolon-separated B,T,N,H.")
flags.DEFINE_list("rows", ["triton", "mosaic", "cudnn", "tokamax_mosaic", "tokamax_triton", "xla"],
                  "Which implementations to time.")
flags.DEFINE_integer("iters", 20, "Timed calls per measurement (median reported).")
flags.DEFINE_integer("xla_max_t", 8192, "Skip XLA (materialises T x T) above this T.")
flags.DEFINE_string("mosaic_variants", "", "Extra Mosaic GPU tiles to time at every shape: "
                    "';'-separated mosaic_gpu.Settings fields: "
                    "'block_kv,stages[,dq_block_kv,dq_stages,dkv_block_q,dkv_stages]'.")
flags.DEFINE_string("triton_variants", "", "Extra Triton block configs to time at every shape: "
                    "';'-separated 'name:fwd=bq,bk,warps,stages/dq=.../dkdv=...'.")

S_VALUE = 0.43  # a typical learned SSMax s; the value does not change the cost


def _flops(B, T, N, H):
  return 4.0 * B * N * T * T * H / 2


def _multiplier(s_N, T):
  log_n = jnp.log(jnp.arange(1, T + 1, dtype=jnp.float32))
  return s_N[None, None, :] * log_n[None, :, None]          # [1,T,N]


def _ours(module, settings=None):
  """attn(q, k, v, s_N or None) through one of our kernels; None means plain softmax (c = 1)."""
  def attn(q, k, v, s_N):
    B, T, N, H = q.shape
    c = jnp.ones((B, T, N), jnp.float32) if s_N is None else jnp.broadcast_to(
        _multiplier(s_N, T), (B, T, N))
    return module.flash_attention(q, k, v, c, None, None, None, None, scale=1 / math.sqrt(H),
                                  causal=True, window=None, settings=settings)
  return attn


def _mosaic_reason(q, k, settings=None):
  """Why the Hopper kernels cannot take this shape (None when they can)."""
  from ssmax_jax.ops.attention import mosaic_gpu  # pylint: disable=g-import-not-at-top
  if jax.default_backend() != "gpu" or not mosaic_gpu._on_hopper():
    return "not a Hopper GPU"
  settings = settings or mosaic_gpu.default_settings(q.shape[-1])
  return mosaic_gpu.kernel_reason(q, k, None, None, None, None, None, None, window=None,
                                  settings=settings)


def _mosaic(settings=None):
  """The Hopper kernels where they take the shape, else Triton (as the op chooses)."""
  from ssmax_jax.ops.attention import mosaic_gpu  # pylint: disable=g-import-not-at-top
  hopper, fallback = _ours(mosaic_gpu, settings), _ours(triton)

  def attn(q, k, v, s_N):
    return (fallback if _mosaic_reason(q, k, settings) else hopper)(q, k, v, s_N)
  return attn


def _prescaled(inner):
  def attn(q, k, v, s_N):
    if s_N is not None:
      c = _multiplier(s_N, q.shape[1])
      q = (q.astype(jnp.float32) * c[..., None]).astype(q.dtype)
    return inner(q, k, v)
  return attn


def _cudnn(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")


def _xla(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")


def _tokamax(impl):
  import tokamax  # pylint: disable=g-import-not-at-top
  return lambda q, k, v: tokamax.dot_product_attention(q, k, v, is_causal=True,
                                                       implementation=impl)


def _import_tokamax():
  # tokamax imports xprof only for its own profiler; wall-clock timing needs none of it.
  for name in ["xprof", "xprof.cli", "xprof.cli.tools"]:
    sys.modules.setdefault(name, types.ModuleType(name))
  sys.modules["xprof.cli.tools"].get_kernel_stats_tool = None
  try:
    import tokamax  # pylint: disable=g-import-not-at-top
    return tokamax.__version__
  except ImportError as e:
    print(f"tokamax not importable ({e}); skipping its rows", flush=True)
    return None


def _parse_variant(text):
  name, spec = text.split(":")
  blocks = dataclasses.asdict(triton.default_settings(128))
  for part in spec.split("/"):
    key, vals = part.split("=")
    blocks[key] = tuple(int(x) for x in vals.split(","))
  return name, triton.Settings(**blocks)


def _implementations(tokamax_version):
  impls = {}
  if "triton" in FLAGS.rows:
    impls["triton"] = _ours(triton)
    for text in filter(None, FLAGS.triton_variants.split(";")):
      name, settings = _parse_variant(text)
      impls[f"triton[{name}]"] = _ours(triton, settings)
  if "mosaic" in FLAGS.rows:
    try:
      from ssmax_jax.ops.attention import mosaic_gpu  # pylint: disable=g-import-not-at-top
      impls["mosaic"] = _mosaic()
      for text in filter(None, FLAGS.mosaic_variants.split(";")):
        fields = [f.name for f in dataclasses.fields(mosaic_gpu.Settings)]
        settings = dataclasses.replace(mosaic_gpu.default_settings(128), **dict(
            zip(fields, (int(x) for x in text.split(",")))))
        impls[f"mosaic[{text}]"] = _mosaic(settings)
    except Exception as e:  # noqa: BLE001 -- report and go on with the other rows
      print(f"mosaic_gpu kernel not importable: {type(e).__name__}: {e}", flush=True)
  if "cudnn" in FLAGS.rows:
    impls["cudnn"] = _prescaled(_cudnn)
  if tokamax_version is not None:
    for impl in ("mosaic", "triton"):
      if f"tokamax_{impl}" in FLAGS.rows:
        impls[f"tokamax_{impl}"] = _prescaled(_tokamax(impl))
  if "xla" in FLAGS.rows:
    impls["xla"] = _prescaled(_xla)
  return impls


def _measure(name, attn, variant, q, k, v, s_N, ref):
  B, T, N, H = q.shape
  row = dict(impl=name, variant=variant, B=B, T=T, N=N, H=H)
  if name.startswith("mosaic"):
    reason = _mosaic_reason(q, k)
    row["path"] = "hopper fwd + hopper bwd" if reason is None else f"triton ({reason})"
  s_arg = None if variant == "softmax" else s_N
  fwd = jax.jit(lambda q, k, v, s: attn(q, k, v, s))
  argnums = (0, 1, 2) if s_arg is None else (0, 1, 2, 3)
  fb = jax.jit(jax.grad(lambda q, k, v, s: attn(q, k, v, s).astype(jnp.float32).sum(),
                        argnums=argnums))
  for label, f, mult in (("fwd", fwd, 1.0), ("fb", fb, 3.5)):
    try:
      compiled = f.lower(q, k, v, s_arg).compile()
      mem = compiled.memory_analysis()
      if mem is not None:
        row[f"{label}_temp_mb"] = mem.temp_size_in_bytes / 2**20
      if label == "fwd" and ref is not None:
        out = np.asarray(compiled(q, k, v, s_arg).astype(jnp.float32))
        row["max_abs_err_vs_cudnn"] = float(np.abs(out - ref).max())
      t = median_s(compiled, q, k, v, s_arg, iters=FLAGS.iters, warmup=2)
      row[f"{label}_ms"] = t * 1e3
      row[f"{label}_tflops"] = mult * _flops(B, T, N, H) / t / 1e12
    except Exception as e:  # noqa: BLE001 -- a failing row is reported, not fatal
      row[f"{label}_err"] = f"{type(e).__name__}: {str(e)[:300]}"
      traceback.print_exc()
  stats = jax.devices()[0].memory_stats() or {}
  row["proc_peak_gb"] = stats.get("peak_bytes_in_use", 0) / 2**30
  print(json.dumps(row), flush=True)
  return row


def _table(rows):
  lines = ["| impl | variant | B,T,N,H | fwd ms | fwd TF/s | fwd+bwd ms | fwd+bwd TF/s | "
           "err vs cuDNN | temp MB fwd/fb |", "|" + "---|" * 9]
  for r in rows:
    f = lambda k, fmt: (fmt % r[k]) if k in r else ("ERR" if k.split("_")[0] + "_err" in r
                                                      else "-")
    lines.append(
        f"| {r['impl']} | {r['variant']} | {r['B']},{r['T']},{r['N']},{r['H']} | "
        f"{f('fwd_ms', '%.3f')} | {f('fwd_tflops', '%.0f')} | {f('fb_ms', '%.3f')} | "
        f"{f('fb_tflops', '%.0f')} | {f('max_abs_err_vs_cudnn', '%.3g')} | "
        f"{f('fwd_temp_mb', '%.0f')}/{f('fb_temp_mb', '%.0f')} |")
  return "\n".join(lines)


def main(argv):
  del argv
  print("jax", jax.__version__, jax.devices(), flush=True)
  tokamax_version = None
  if any(r.startswith("tokamax") for r in FLAGS.rows):
    tokamax_version = _import_tokamax()
    print("tokamax", tokamax_version, flush=True)
  impls = _implementations(tokamax_version)
  rows = []
  for shape in FLAGS.shapes.split(";"):
    B, T, N, H = (int(x) for x in shape.split(","))
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(key, (B, T, N, H), jnp.bfloat16) for key in (kq, kk, kv))
    s_N = jnp.full((N,), S_VALUE, jnp.float32)
    ref = np.asarray(jax.jit(_prescaled(_cudnn))(q, k, v, s_N).astype(jnp.float32))
    ref_plain = np.asarray(jax.jit(_cudnn)(q, k, v).astype(jnp.float32))
    for name, attn in impls.items():
      if name == "xla" and T > FLAGS.xla_max_t:
        continue
      ours = not (name.startswith("tokamax") or name in ("cudnn", "xla"))
      for variant in (("ssmax", "softmax") if ours else ("ssmax",)):
        r = ref if variant == "ssmax" else ref_plain
        rows.append(_measure(name, attn, variant, q, k, v, s_N, r if ours else None))
  table = _table(rows)
  if FLAGS.out_json:
    with open(FLAGS.out_json, "w") as f:
      json.dump(dict(jax=jax.__version__, tokamax=tokamax_version, rows=rows), f, indent=1)
  print("\n" + table, flush=True)


if __name__ == "__main__":
  app.run(main)
