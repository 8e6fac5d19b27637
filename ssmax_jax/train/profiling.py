"""Where a step's device time goes: a JAX profiler trace of a few steps, summarised by kernel.

The trace is written with `create_perfetto_trace=True`, a gzipped Chrome-trace JSON that plain
Python reads, so the summary needs no profiler front end on the machine (the same directory
opens in TensorBoard/XProf for the full view).
"""
import collections
import glob
import gzip
import json
import os
import re

import jax

# Kernel-name fragments -> category, first match wins (cuBLAS/cuDNN/XLA/Triton/Pallas names).
CATEGORIES = (
    ("attention", ("fmha", "flash", "attention", "mosaic_gpu", "fwd_kernel", "dq_kernel",
                   "dkv_kernel", "dkdv_kernel")),
    ("matmul", ("gemm", "nvjet", "xmma", "cutlass", "wgmma", "matmul", "dot")),
    ("scatter/gather", ("scatter", "gather", "dynamic-update-slice", "dynamic_update_slice")),
    ("reduction", ("reduce", "reduction")),
    ("copy/transpose", ("copy", "transpose", "memcpy", "memset")),
)


# Host-side events on XLA's CPU threads that are not ops.
_CPU_BOOKKEEPING = ("$", "SlinkyThreadPool", "ThunkExecutor", "ThreadpoolListener", "end: ")


def start_trace(log_dir: str):
  jax.profiler.start_trace(log_dir, create_perfetto_trace=True)


def stop_trace(log_dir: str) -> str:
  """Stops the trace started by start_trace; returns the newest trace file under log_dir."""
  jax.profiler.stop_trace()
  paths = glob.glob(os.path.join(log_dir, "**", "perfetto_trace.json.gz"), recursive=True)
  if not paths:
    raise RuntimeError(f"the profiler wrote no perfetto_trace.json.gz under {log_dir}.")
  return max(paths, key=os.path.getmtime)


def category(kernel_name: str) -> str:
  name = kernel_name.lower()
  for label, fragments in CATEGORIES:
    if any(f in name for f in fragments):
      return label
  return "elementwise/other fusions"


def trace_events(trace_path: str) -> list:
  """Every event of a trace file."""
  with gzip.open(trace_path, "rt") as f:
    doc = json.load(f)
  return doc["traceEvents"] if isinstance(doc, dict) else doc


def device_pids(events) -> set:
  """The process ids of the trace's devices (GPU/TPU streams live under them)."""
  return {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
          and e["args"]["name"].startswith("/device:")}


def trace_ops(trace_path: str):
  """The op events of a trace file (see _op_events)."""
  return _op_events(trace_events(trace_path))


def _op_events(events):
  """Complete events that ran on a device (GPU/TPU streams), else XLA's CPU executor threads."""
  meta = [e for e in events if e.get("ph") == "M"]
  pids = device_pids(events)
  ops = [e for e in events if e.get("ph") == "X" and e["pid"] in pids]
  if ops:
    return ops
  cpu_threads = {(e["pid"], e["tid"]) for e in meta if e.get("name") == "thread_name"
                 and e["args"]["name"].startswith("tf_XLA")}
  return [e for e in events if e.get("ph") == "X" and (e["pid"], e.get("tid")) in cpu_threads
          and not e["name"].startswith(_CPU_BOOKKEEPING)]


def device_time_by_kernel(trace_path: str, num_steps: int) -> dict:
  """{'per_step_ms', 'categories': [(name, ms per step, share)], 'kernels': [(name, category,
  ms per step, calls per step, share)]}, largest first. Overlapping streams are summed."""
  total = collections.Counter()
  calls = collections.Counter()
  for e in trace_ops(trace_path):
    total[e["name"]] += e.get("dur", 0.0) / 1e3  # microseconds -> ms
    calls[e["name"]] += 1
  all_ms = sum(total.values()) or 1.0
  by_category = collections.Counter()
  for name, ms in total.items():
    by_category[category(name)] += ms
  return dict(
      per_step_ms=all_ms / num_steps,
      categories=[(c, ms / num_steps, ms / all_ms) for c, ms in by_category.most_common()],
      kernels=[(n, category(n), ms / num_steps, calls[n] / num_steps, ms / all_ms)
               for n, ms in total.most_common()])


def kernel_key(name: str) -> str:
  """HLO names use '.' and '-' where GPU kernel names have '_' (loop_add_fusion.3 -> _3)."""
  return re.sub(r"[.\-]", "_", name)


def format_summary(summary: dict, top: int = 15, sources: dict | None = None) -> str:
  """The summary as two markdown tables (categories, then the top kernels); `sources`
  ({kernel_key(fusion name): source lines}) adds the code each fused kernel comes from."""
  lines = [f"device time per step: {summary['per_step_ms']:.2f} ms (kernels summed)", "",
           "| category | ms/step | share |", "|---|---|---|"]
  lines += [f"| {c} | {ms:.2f} | {share:.1%} |" for c, ms, share in summary["categories"]]
  source = "" if sources is None else " source |"
  lines += ["", "| kernel | category | ms/step | calls/step | share |" + source,
            "|---|---|---|---|---|" + ("---|" if source else "")]
  lines += [f"| `{n[:70]}` | {c} | {ms:.3f} | {k:g} | {share:.1%} |"
            + ("" if sources is None else f" {sources.get(kernel_key(n), '')} |")
            for n, c, ms, k, share in summary["kernels"][:top]]
  return "\n".join(lines)
