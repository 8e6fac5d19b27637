"""Training throughput of configs/paper_162m.py on one device: tokens/s and MFU of the full
train step (forward, fused chunked loss, backward, AdamW) on random tokens, batch 32 x 1024.

  python -m benchmarks.bench_train                       # the default set of configurations
  python -m benchmarks.bench_train --attention=ssmax --vocab_pad=64 --chunk=8192,32768
  python -m benchmarks.bench_train --small               # CPU smoke test with a tiny model
  python -m benchmarks.bench_train --model=h200_small --batch=128 --breakdown \
      --pipeline_data=DIR --workers=4,8 --real_tokens       # the reproduction's preset, real text

--dump_hlo=DIR writes each configuration's compiled step (optimized HLO) there;
--breakdown adds the loss forward alone and forward+backward without the optimizer;
--pipeline_data times the grain input pipeline alone; --real_tokens steps on a batch of it.

Prints one line per configuration as it is measured, then a table. MFU counts
6 x non-embedding parameters + 6 x layers x T x d_model FLOPs per token (as
shared/bench/jax_gpt_anchor.py) against config.train.peak_tflops or the device's known peak.
"""
import gzip
import itertools
import os
import re
import time

from flax import nnx

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

from ssmax_jax.configs import paper_162m
from ssmax_jax.configs import reproduce
from benchmarks import hlo_analysis
from benchmarks import trace_analysis
from benchmarks.timing import mean_ms
from ssmax_jax import data as data_lib
from ssmax_jax.models.transformer import count_params
from ssmax_jax.train import config as config_lib
from ssmax_jax.train import mesh as mesh_lib
from ssmax_jax.train import profiling
from ssmax_jax.train import trainer
from ssmax_jax.train.optim import make_optimizer
from ssmax_jax.train.step import flops_per_token, loss_options, loss_sum

_BATCH = flags.DEFINE_integer("batch", 32, "Sequences per step.")
_SEQ = flags.DEFINE_integer("seq", 1024, "Sequence length.")
_ACCUM = flags.DEFINE_integer("grad_accum", 1, "Micro-batches of --batch sequences per optimizer "
                              "step (paper_162m trains with 64); tokens/s counts them all.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per configuration (after 3 warm-up).")
_ATTENTION = flags.DEFINE_list("attention", ["softmax", "ssmax"], "Attention variants.")
_VOCAB_PAD = flags.DEFINE_list("vocab_pad", ["64", "1"], "model.vocab_pad_multiple values.")
_CHUNK = flags.DEFINE_list("chunk", ["config"], "train.loss_chunk_tokens values; 'config' "
                           "keeps the model config's.")
_REMAT = flags.DEFINE_list("remat", ["none"], "model.remat_policy values: none, block, dots "
                           "(false and true: none and block).")
_LOGITS = flags.DEFINE_list("logits_dtype", ["bfloat16"],
                            "train.loss_logits_dtype values (bfloat16: the paper config's).")
_LOSS_IMPL = flags.DEFINE_list("loss_implementation", ["auto"],
                               "train.loss_implementation values: auto, xla, pallas.")
_ATTN_IMPL = flags.DEFINE_list("attention_impl", ["auto"], "model.implementation values (the "
                                "attention backend): auto (the op's choice), cudnn, pallas, xla.")
_NORM_IMPL = flags.DEFINE_list("norm_implementation", ["paper"], "model.norm_implementation "
                                "values (residual add + RMSNorm): paper (the config's), auto, "
                                "xla, pallas.")
_XLA_FLAGS = flags.DEFINE_string("xla_flags", "paper", "XLA flags for the whole run (XLA reads "
                                  "them once): 'paper' takes paper_162m's config.xla_flags; '' "
                                  "none beyond XLA_FLAGS.")
_MEAN_DOC = flags.DEFINE_float("mean_doc", 0, "Mean document length of a packed batch (documents "
                                "drawn as shared/bench/torch_docmask_anchor.py draws them, "
                                "data.packing on); 0: one unpacked sequence per row.")
_SMALL = flags.DEFINE_bool("small", False, "A tiny model for a CPU smoke test.")
_MODEL = flags.DEFINE_enum("model", "paper_162m", ["paper_162m", "h200_small"],
                           "The model: configs/paper_162m.py, or the h200_small preset of "
                           "configs/reproduce.py (the reproduction's recipe).")
_PIPELINE = flags.DEFINE_string("pipeline_data", "", "A prepared data directory: also time the "
                                "grain input pipeline alone at the batch of the configuration.")
_REAL = flags.DEFINE_bool("real_tokens", False, "Time the step on a batch of --pipeline_data "
                          "(GPT-2 tokens) instead of random token ids.")
_PROFILE = flags.DEFINE_integer("profile_steps", 0, "Trace this many steps of each configuration"
                                " and print device time by kernel category and the top kernels.")
_PROFILE_TOP = flags.DEFINE_integer("profile_top", 15, "Kernels listed in the profile table.")
_PROFILE_DIR = flags.DEFINE_string("profile_dir", "/tmp/ssmax_bench_profile",
                                   "Where the traces go (open in TensorBoard/XProf).")
_WORKERS = flags.DEFINE_list("workers", ["4"], "data.worker_count values for --pipeline_data.")
_DUMP_HLO = flags.DEFINE_string("dump_hlo", "", "A folder: write each configuration's compiled "
                                 "train step (optimized HLO, gzipped), to map the profile's "
                                 "fusion names to the ops they hold.")
_BREAKDOWN = flags.DEFINE_bool("breakdown", False, "Also time the loss forward alone and the "
                               "forward+backward without the optimizer update.")


def _config(attention, vocab_pad, chunk, remat, logits_dtype, loss_implementation, attn_impl,
            norm_impl="paper"):
  if _MODEL.value == "paper_162m":
    c = paper_162m.get_config()
  else:
    c = reproduce.get_config(_MODEL.value)
    del c["recipe"]
  c.model.update(attention=attention, vocab_pad_multiple=vocab_pad, remat_policy=remat,
                 implementation=None if attn_impl == "auto" else attn_impl)
  if norm_impl != "paper":
    c.model.norm_implementation = norm_impl
  c.train.update(batch_size=_BATCH.value * _ACCUM.value, seq_len=_SEQ.value,
                 grad_accum_steps=_ACCUM.value, loss_logits_dtype=logits_dtype,
                 loss_implementation=loss_implementation)
  if chunk != "config":
    c.train.loss_chunk_tokens = int(chunk)
  c.mesh.shape = (1, 1, 1)
  c.data.packing = _MEAN_DOC.value > 0
  if _SMALL.value:
    c.model.update(vocab_size=512, d_model=64, num_layers=2, num_heads=4, d_ff=128,
                   dtype="float32")
  return c


def packed_documents(B, T, mean_doc, seed=0):
  """(segment_ids, positions) [B,T] int32 of documents drawn as the docmask anchor draws them:
  exponential lengths of mean `mean_doc`, at least 16, cut at the row's end."""
  rng = np.random.default_rng(seed)
  seg, pos = np.zeros((B, T), np.int32), np.zeros((B, T), np.int32)
  for b in range(B):
    t, d = 0, 0
    while t < T:
      n = int(min(max(16, rng.exponential(mean_doc)), T - t))
      seg[b, t:t + n], pos[b, t:t + n] = d, np.arange(n)
      t, d = t + n, d + 1
  return seg, pos


def dump_hlo(text, name):
  """Writes a compiled step's optimized HLO to --dump_hlo/<name>.hlo.txt.gz."""
  os.makedirs(_DUMP_HLO.value, exist_ok=True)
  path = os.path.join(_DUMP_HLO.value, re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".hlo.txt.gz")
  with gzip.open(path, "wt") as f:
    f.write(text)


def measure(config, name="step") -> dict:
  cfg = config_lib.validate(config)
  mesh = mesh_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  tx = make_optimizer(config.optimizer, config.train.num_steps)
  t0 = time.perf_counter()
  st = trainer._State.init(cfg, tx, mesh, config)
  jax.block_until_ready(st.leaves)
  init_s = time.perf_counter() - t0
  B, T = config.train.batch_size, config.train.seq_len
  if _REAL.value:  # text repeats tokens, which random ids do not (the embedding's backward)
    it = data_lib.make_train_iterator(_PIPELINE.value, "gpt2", T, B, packing=False)
    batch = next(it)
    it.close()
  else:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (B, T + 1), dtype=np.int32)
    batch = dict(inputs=tokens[:, :-1], targets=tokens[:, 1:],
                 segment_ids=np.ones((B, T), np.int32),
                 positions=np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)),
                 loss_mask=np.ones((B, T), np.float32))
  if _MEAN_DOC.value > 0:
    batch["segment_ids"], batch["positions"] = packed_documents(B, T, _MEAN_DOC.value)
    print(f"packed: {int(batch['segment_ids'].max(1).sum()) + B} documents in {B}x{T} "
          f"(mean_doc={_MEAN_DOC.value:g})")
  batch = jax.device_put({k: jnp.asarray(v) for k, v in batch.items()},
                         mesh_lib.batch_sharding(mesh))
  parts = _time_parts(st, batch, config, mesh) if _BREAKDOWN.value else {}
  with jax.set_mesh(mesh):
    t0 = time.perf_counter()
    step_fn, hlo = st.step_fn, None
    if _DUMP_HLO.value or _PROFILE.value:  # compiled ahead: the profile names the HLO's fusions
      step_fn = st.step_fn.lower(st.leaves, batch).compile()
      hlo = step_fn.as_text()
    if _DUMP_HLO.value:
      dump_hlo(hlo, name)
    st.leaves, metrics = step_fn(st.leaves, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    for _ in range(3):
      st.leaves, metrics = step_fn(st.leaves, batch)
    jax.block_until_ready(metrics)
    dt, host_s, loss = _timed_steps(st, step_fn, batch)
    t0 = time.perf_counter()
    for _ in range(_STEPS.value):  # each waited for, as a profile traces them: plus dispatch
      st.leaves, metrics = step_fn(st.leaves, batch)
      jax.block_until_ready(metrics)
    waited_s = (time.perf_counter() - t0) / _STEPS.value
    profile = None
    if _PROFILE.value:
      def one_step():
        st.leaves, m = step_fn(st.leaves, batch)
        return m
      path = trace_analysis.trace_steps(one_step, _PROFILE.value, _PROFILE_DIR.value)
      profile = profiling.device_time_by_kernel(path, _PROFILE.value)
      profile["sources"] = hlo_analysis.fusion_sources(hlo)
      profile["idle"] = trace_analysis.device_idle(path, _PROFILE.value, top=_PROFILE_TOP.value)
      profile["host"] = trace_analysis.host_events(path, _PROFILE.value, top=_PROFILE_TOP.value)
  num_params = count_params(st.objects()[0])
  stats = jax.devices()[0].memory_stats() or {}
  peak_gib = stats.get("peak_bytes_in_use", 0) / 2 ** 30 or None
  tps = B * T / dt
  peak = trainer._peak_flops(config)
  return dict(params=num_params, peak_gib=peak_gib, init_s=init_s, compile_s=compile_s, profile=profile, **parts,
              step_ms=dt * 1e3, host_ms=host_s * 1e3, waited_ms=waited_s * 1e3,
              tokens_per_s=tps,
              mfu=tps * flops_per_token(cfg, num_params, T) / peak if peak else None, loss=loss)


def _timed_steps(st, step_fn, batch):
  """(seconds per step, host seconds per step inside step_fn, last loss) of --steps steps
  issued back to back. Host time well below the step's: the host runs ahead (JAX dispatches
  asynchronously and blocks only when too many steps are queued), the device sets the pace."""
  host_s = 0.0
  t0 = time.perf_counter()
  for _ in range(_STEPS.value):
    t1 = time.perf_counter()
    st.leaves, metrics = step_fn(st.leaves, batch)
    host_s += time.perf_counter() - t1
  loss = float(metrics["loss"])  # waits for the last step
  return (time.perf_counter() - t0) / _STEPS.value, host_s / _STEPS.value, loss


def _time_parts(st, batch, config, mesh) -> dict:
  """ms of the loss forward alone and of forward+backward (no optimizer) on the same batch."""
  model = st.objects()[0]
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  kw = loss_options(config)

  def loss(params):
    return loss_sum(nnx.merge(graphdef, params, rest), batch, **kw)[0]

  with jax.set_mesh(mesh):
    return dict(forward_ms=mean_ms(jax.jit(loss), params, steps=_STEPS.value),
                forward_backward_ms=mean_ms(jax.jit(jax.value_and_grad(loss)), params,
                                            steps=_STEPS.value))


def time_pipeline(directory, tokenizer, workers) -> float:
  """tokens/s of the grain training pipeline alone (packing off, as the presets train)."""
  it = data_lib.make_train_iterator(directory, tokenizer, _SEQ.value, _BATCH.value,
                                    packing=False, worker_count=workers)
  try:
    next(it)
    t0 = time.perf_counter()
    for _ in range(_STEPS.value):
      next(it)
    return _BATCH.value * _SEQ.value * _STEPS.value / (time.perf_counter() - t0)
  finally:
    it.close()


def main(argv):
  del argv
  flags_of = paper_162m.get_config() if _XLA_FLAGS.value == "paper" else dict(
      xla_flags=_XLA_FLAGS.value)
  xla_flags = config_lib.apply_xla_flags(flags_of)  # before anything starts JAX's backends
  if _REAL.value and not _PIPELINE.value:
    raise ValueError("--real_tokens needs --pipeline_data=DIR (a prepared GPT-2 data directory).")
  if _REAL.value and _SMALL.value:
    raise ValueError("--real_tokens reads GPT-2 ids, more than --small's 512-word vocabulary: "
                     "drop --small.")
  for workers in map(int, _WORKERS.value) if _PIPELINE.value else ():
    rate = time_pipeline(_PIPELINE.value, "gpt2", workers)
    print(f"input pipeline, {workers} workers: {rate:,.0f} tokens/s", flush=True)
  device = jax.devices()[0]
  print(f"jax {jax.__version__}, {device.platform} {device.device_kind}, "
        f"batch {_BATCH.value} x {_SEQ.value}, {_ACCUM.value} micro-batch(es) per step, "
        f"XLA_FLAGS={xla_flags!r}", flush=True)
  rows = []
  for attention, pad, chunk, remat, logits, loss_impl, attn_impl, norm_impl in itertools.product(
      _ATTENTION.value, _VOCAB_PAD.value, _CHUNK.value, _REMAT.value, _LOGITS.value,
      _LOSS_IMPL.value, _ATTN_IMPL.value, _NORM_IMPL.value):
    remat = {"false": "none", "true": "block"}.get(remat.lower(), remat)
    config = _config(attention, int(pad), chunk, remat, logits, loss_impl,
                     attn_impl, norm_impl)
    name = (f"attention={attention} vocab_pad={pad} chunk={config.train.loss_chunk_tokens} "
            f"remat={remat} logits={logits} loss={loss_impl}"
            + ("" if attn_impl == "auto" else f" attention_impl={attn_impl}")
            + ("" if norm_impl == "paper" else f" norm={norm_impl}")
            + ("" if _ACCUM.value == 1 else f" grad_accum={_ACCUM.value}"))
    r = measure(config, name)
    mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.3f}"
    parts = "".join(f" {k}={r[k]:.1f}" for k in ("forward_ms", "forward_backward_ms") if k in r)
    print(f"{name}: params={r['params'] / 1e6:.1f}M init={r['init_s']:.0f}s "
          f"compile={r['compile_s']:.0f}s{parts} "
          f"step={r['step_ms']:.1f}ms tokens/s={r['tokens_per_s']:,.0f} MFU={mfu} "
          f"loss={r['loss']:.3f} peak_mem="
          + ("n/a" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}GiB"), flush=True)
    if r["profile"] is not None:
      print(profiling.format_summary(r["profile"], top=_PROFILE_TOP.value,
                                     sources=r["profile"]["sources"]), flush=True)
      print(trace_analysis.format_idle(r["profile"]["idle"]), flush=True)
      print(trace_analysis.format_host_events(r["profile"]["host"]), flush=True)
    rows.append((name, r))
  # Then the host's ms inside step_fn per step, and the step when each is waited for.
  print("\n| configuration | step ms | tokens/s | MFU | host ms in step_fn | ms, each waited for "
        "|\n|---|---|---|---|---|---|")
  for name, r in rows:
    mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.3f}"
    print(f"| {name} | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | {mfu} | "
          f"{r['host_ms']:.1f} | {r['waited_ms']:.1f} |")


if __name__ == "__main__":
  app.run(main)
