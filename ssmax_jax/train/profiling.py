"""Where a step's device time goes: a JAX profiler trace of a few steps, summarised by kernel.

The trace is written with `create_perfetto_trace=True`, a gzipped Chrome-trace JSON that plain
Python reads, so the summary needs no profiler front end on the machine (the same directory
opens in TensorBoard/XProf for the full view).
"""
import collections
import functools
import glob
import gzip
import json
import math
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


def trace_steps(run_step, num_steps: int, log_dir: str) -> str:
  """Issues `run_step()` num_steps times back to back under the profiler, as a training loop
  issues steps (JAX dispatches asynchronously), then waits for the last one's result; returns
  the trace file's path. Any wait of the device between two steps is then in the trace.
  """
  if num_steps < 1:
    raise ValueError(f"num_steps={num_steps} must be >= 1.")
  start_trace(log_dir)
  try:
    for _ in range(num_steps):
      out = run_step()
    jax.block_until_ready(out)
  finally:
    path = stop_trace(log_dir)
  return path


def category(kernel_name: str) -> str:
  name = kernel_name.lower()
  for label, fragments in CATEGORIES:
    if any(f in name for f in fragments):
      return label
  return "elementwise/other fusions"


def _trace_events(trace_path: str) -> list:
  """Every event of a trace file."""
  with gzip.open(trace_path, "rt") as f:
    doc = json.load(f)
  return doc["traceEvents"] if isinstance(doc, dict) else doc


def _device_pids(events) -> set:
  """The process ids of the trace's devices (GPU/TPU streams live under them)."""
  return {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
          and e["args"]["name"].startswith("/device:")}


def _trace_ops(trace_path: str):
  """The op events of a trace file (see _op_events)."""
  return _op_events(_trace_events(trace_path))


def _op_events(events):
  """Complete events that ran on a device (GPU/TPU streams), else XLA's CPU executor threads."""
  meta = [e for e in events if e.get("ph") == "M"]
  device_pids = _device_pids(events)
  ops = [e for e in events if e.get("ph") == "X" and e["pid"] in device_pids]
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
  for e in _trace_ops(trace_path):
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


def device_idle(trace_path: str, num_steps: int, top: int = 10) -> dict:
  """Where a device waits over steps traced back to back: {'span_ms' (first kernel's start to
  the last one's end, per step), 'busy_ms', 'idle_ms' (per step; span = busy + idle), 'gaps':
  [(kernel before, kernel after, ms per step, gaps per step)], longest total first}. A wait
  between two steps shows as the pair (last kernel of a step, first kernel of the next).

  Kernels of all device streams are merged into one busy timeline; a gap is time none runs.
  """
  ops = sorted(_trace_ops(trace_path), key=lambda e: e["ts"])
  gaps, busy, end, last = [], 0.0, None, None
  for e in ops:
    start, stop = e["ts"], e["ts"] + e.get("dur", 0.0)
    if end is None or start > end:
      if end is not None:
        gaps.append((start - end, last, e["name"]))
      busy += stop - start
      end, last = stop, e["name"]
    elif stop > end:
      busy += stop - end
      end, last = stop, e["name"]
  by_pair, count = collections.Counter(), collections.Counter()
  for us, before, after in gaps:
    by_pair[before, after] += us
    count[before, after] += 1
  span = (end - ops[0]["ts"]) if ops else 0.0
  return dict(span_ms=span / 1e3 / num_steps, busy_ms=busy / 1e3 / num_steps,
              idle_ms=sum(g[0] for g in gaps) / 1e3 / num_steps,
              gaps=[(b, a, us / 1e3 / num_steps, count[b, a] / num_steps)
                    for (b, a), us in by_pair.most_common(top)])


def host_events(trace_path: str, num_steps: int, top: int = 10) -> list:
  """[(name, ms per step, calls per step)] of the host's trace events (the runtime's annotations:
  dispatch, launches, waits), longest total first: where the host spends the steps, e.g. how
  long it blocks before the device has room for another step. Nested events count in full."""
  events = _trace_events(trace_path)
  device_pids = _device_pids(events)
  total, calls = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("pid") not in device_pids:
      total[e["name"]] += e.get("dur", 0.0)
      calls[e["name"]] += 1
  return [(n, us / 1e3 / num_steps, calls[n] / num_steps) for n, us in total.most_common(top)]


def format_host_events(rows: list) -> str:
  lines = ["| host event | ms/step | calls/step |", "|---|---|---|"]
  lines += [f"| `{n[:80]}` | {ms:.3f} | {k:g} |" for n, ms, k in rows]
  return "\n".join(lines)


def format_idle(idle: dict) -> str:
  lines = [f"device timeline per step (steps issued back to back): {idle['span_ms']:.2f} ms = "
           f"busy {idle['busy_ms']:.2f} + idle {idle['idle_ms']:.2f}", "",
           "| kernel before | kernel after | idle ms/step | "
           "gaps/step |", "|---|---|---|---|"]
  lines += [f"| `{b[:60]}` | `{a[:60]}` | {ms:.3f} | {k:g} |" for b, a, ms, k in idle["gaps"]]
  return "\n".join(lines)


_SECTION_ROW = re.compile(r'^(\d+) (?:"(.*)"|\{(.*)\})$')
_FIELD = re.compile(r"(\w+)=(\d+)")
_FUSION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*? fusion\(.*?calls=%?([\w.\-]+)")
_COMPUTATION = re.compile(r"^%?([\w.\-]+) \(.*\{$")
_FRAME_ID = re.compile(r"stack_frame_id=(\d+)")


def _kernel_key(name: str) -> str:
  """HLO names use '.' and '-' where GPU kernel names have '_' (loop_add_fusion.3 -> _3)."""
  return re.sub(r"[.\-]", "_", name)


def fusion_sources(hlo_text: str, prefer: str = "ssmax_jax/") -> dict:
  """{kernel name: 'file:line function, ...'} for every fusion of a compiled module's text
  (`jitted.lower(...).compile().as_text()`): the source lines of the ops it holds, most ops
  first, up to three. Each op's line is the innermost frame of its stack under `prefer` (this
  library's code), else its innermost frame. Kernels with no fusion of that name (cuBLAS,
  cuDNN, custom calls) are absent."""
  sections, section = collections.defaultdict(dict), None
  computations, current, fusions = collections.defaultdict(list), None, {}
  for line in hlo_text.splitlines():
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      section = line
      continue
    row = _SECTION_ROW.match(line) if section else None
    if row:
      sections[section][int(row.group(1))] = (row.group(2) if row.group(2) is not None
                                              else dict((k, int(v)) for k, v in
                                                        _FIELD.findall(row.group(3))))
      continue
    section = None
    if (m := _COMPUTATION.match(line)):
      current = m.group(1)
    elif line.startswith("}"):
      current = None
    elif current is not None:
      computations[current].append(line)
    if (m := _FUSION.match(line)):
      fusions[m.group(1)] = m.group(2)

  names, functions = sections["FileNames"], sections["FunctionNames"]
  locations, frames = sections["FileLocations"], sections["StackFrames"]

  @functools.cache  # many ops share a frame
  def where(frame_id):
    """The chosen frame's 'file:line function' (parent ids are printed one above the frame's,
    0 for none)."""
    chain = []
    while frame_id in frames and len(chain) < 64:
      loc = locations.get(frames[frame_id]["file_location_id"])
      if loc:
        chain.append(loc)
      frame_id = frames[frame_id].get("parent_frame_id", 0) - 1
    if not chain:
      return None
    loc = next((l for l in chain if prefer in names.get(l["file_name_id"], "")), chain[0])
    path = names.get(loc["file_name_id"], "?")
    short = path[path.index(prefer):] if prefer in path else os.path.basename(path)
    return f"{short}:{loc.get('line', 0)} {functions.get(loc.get('function_name_id'), '')}".strip()

  out = {}
  for fusion, computation in fusions.items():
    counts = collections.Counter()
    for line in computations.get(computation, ()):
      if (m := _FRAME_ID.search(line)) and (w := where(int(m.group(1)))):
        counts[w] += 1
    if counts:
      out[_kernel_key(fusion)] = ", ".join(w for w, _ in counts.most_common(3))
  return out


def format_summary(summary: dict, top: int = 15, sources: dict | None = None) -> str:
  """The summary as two markdown tables (categories, then the top kernels); `sources`
  (fusion_sources) adds the code each fused kernel comes from."""
  lines = [f"device time per step: {summary['per_step_ms']:.2f} ms (kernels summed)", "",
           "| category | ms/step | share |", "|---|---|---|"]
  lines += [f"| {c} | {ms:.2f} | {share:.1%} |" for c, ms, share in summary["categories"]]
  source = "" if sources is None else " source |"
  lines += ["", "| kernel | category | ms/step | calls/step | share |" + source,
            "|---|---|---|---|---|" + ("---|" if source else "")]
  lines += [f"| `{n[:70]}` | {c} | {ms:.3f} | {k:g} | {share:.1%} |"
            + ("" if sources is None else f" {sources.get(_kernel_key(n), '')} |")
            for n, c, ms, k, share in summary["kernels"][:top]]
  return "\n".join(lines)


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
                "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([\w\-]+)\((.*)$")
_OPERAND = re.compile(r"%([\w.\-]+)")


def _elements(dims: str) -> int:
  return math.prod(int(d) for d in dims.split(",") if d)


def _shape_bytes(shape: str) -> int:
  return sum(_elements(dims) * _DTYPE_BYTES.get(dtype, 4) for dtype, dims in _ARRAY.findall(shape))


def _kernels(hlo_text: str):
  """[(instruction name, output shape, operand names, custom-call target or None)] of the
  fusions and custom calls of a compiled module's text that run as kernels (outside fused
  computations), and {instruction name: shape} of every instruction."""
  fused = set(re.findall(r"\bcalls=%?([\w.\-]+)", hlo_text))  # the bodies of fusions
  shapes, kernels, inside_fused = {}, [], False
  for line in hlo_text.splitlines():
    if line and not line[0].isspace():  # a computation's header (or its end, or ENTRY)
      inside_fused = bool((c := _COMPUTATION.match(line)) and c.group(1) in fused)
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    shapes[m.group(1)] = m.group(2)
    if inside_fused or m.group(3) not in ("fusion", "custom-call"):
      continue
    target = re.search(r'custom_call_target="([^"]+)"', m.group(4))
    operands = _OPERAND.findall(m.group(4).split(")", 1)[0])
    kernels.append((m.group(1), m.group(2), operands, target.group(1) if target else None))
  return kernels, shapes


def kernel_traffic(hlo_text: str, skip=("__cublas", "__cudnn")) -> dict:
  """{kernel name without its number: (bytes, count)} over the fusions and custom calls of a
  compiled module's text that run outside fused computations: each counts the bytes of its
  operands and outputs, the traffic of a kernel that reads and writes each once. Custom calls
  whose target starts with one of `skip` (GEMMs, attention: compute-bound) are left out. A
  loop body counts once. A model of the memory-bound part of a step that needs no device, e.g.
  on a step compiled for a GPU without one (experiments/compile_offline.py)."""
  kernels, shapes = _kernels(hlo_text)
  out = collections.defaultdict(lambda: [0, 0])
  for name, shape, operands, target in kernels:
    if target and target.startswith(tuple(skip)):
      continue
    key = target or re.sub(r"(\.\d+)+$", "", name)
    out[key][0] += _shape_bytes(shape) + sum(_shape_bytes(shapes.get(o, "")) for o in operands)
    out[key][1] += 1
  return {k: tuple(v) for k, v in sorted(out.items(), key=lambda kv: -kv[1][0])}


_LAUNCH = re.compile(r" ([\w.\-]+) grid: \[(\d+), (\d+), (\d+)\] threads: \[(\d+), (\d+), (\d+)\]")


def elements_per_thread(hlo_text: str, thunk_sequence: str, min_elements: int = 1 << 20) -> list:
  """[(kernel, elements of its largest output, threads launched, launches)] of the XLA fusions
  with at least `min_elements` output elements, fewest elements per thread first.

  thunk_sequence is the `*thunk_sequence.txt` that XLA writes with --xla_dump_to, where each
  launch is listed under its kernel's name ('.' written '_'; kernels XLA deduplicated share
  one). XLA's loop kernels take 4 or more elements a thread, in vector loads; its concatenate
  kernels (2026-11) take one element of each operand a thread. A lead, not a verdict: the
  stacked RoPE gradient's concatenate ran at half the bandwidth, but rewritten as a loop kernel
  with 4 elements a thread it was slower still (docs/performance.md, ninth measurement)."""
  threads, launches = {}, collections.Counter()
  for m in _LAUNCH.finditer(thunk_sequence):
    threads[m.group(1)] = math.prod(int(g) for g in m.groups()[1:])
    launches[m.group(1)] += 1
  out = []
  for name, shape, _, target in _kernels(hlo_text)[0]:
    key = name.replace(".", "_")
    elements = max((_elements(dims) for _, dims in _ARRAY.findall(shape)), default=0)
    if target is None and key in threads and elements >= min_elements:
      out.append((name, elements, threads[key], launches[key]))
  return sorted(out, key=lambda k: k[1] / k[2])


def format_traffic(traffic: dict, top: int = 15, bandwidth: float = 4.0e12) -> str:
  """kernel_traffic as a markdown table, with the total and its time at `bandwidth` B/s."""
  total = sum(b for b, _ in traffic.values())
  lines = [f"memory-bound kernels: {total / 1e9:.2f} GB = {total / bandwidth * 1e3:.2f} ms at "
           f"{bandwidth / 1e12:g} TB/s", "", "| kernel | GB | kernels |", "|---|---|---|"]
  lines += [f"| `{n[:70]}` | {b / 1e9:.3f} | {k} |" for n, (b, k) in list(traffic.items())[:top]]
  return "\n".join(lines)
