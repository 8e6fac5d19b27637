"""What a compiled step holds, read from XLA's text dumps: the source lines of each fusion, the
bytes each memory-bound kernel moves, and the launch dimensions of XLA's kernels (optimized HLO
from `compiled.as_text()`, the thunk sequence from --xla_dump_to). No device needed.
"""
import collections
import functools
import math
import os
import re

from ssmax_jax.train import profiling

_SECTION_ROW = re.compile(r'^(\d+) (?:"(.*)"|\{(.*)\})$')
_FIELD = re.compile(r"(\w+)=(\d+)")
_FUSION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*? fusion\(.*?calls=%?([\w.\-]+)")
_COMPUTATION = re.compile(r"^%?([\w.\-]+) \(.*\{$")
_FRAME_ID = re.compile(r"stack_frame_id=(\d+)")


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
      out[profiling.kernel_key(fusion)] = ", ".join(w for w, _ in counts.most_common(3))
  return out


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
  on a step compiled for a GPU without one (benchmarks/compile_offline.py)."""
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
  kernels take one element of each operand a thread. A lead, not a verdict: a thin kernel
  rewritten to take more elements a thread can still be slower; measure it on the device."""
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


_SOURCE_TABLE = re.compile(r"^(\d+ |FileNames|FunctionNames|FileLocations|StackFrames)")
_SOURCE_INFO = [
    (re.compile(r", metadata=\{[^}]*\}"), ""),
    (re.compile(r",? ?stack_frame_id=\d+"), ""),
    # Pallas kernels travel as MLIR bytecode that embeds source paths; the fingerprint hashes it.
    (re.compile(r'(backend_config|ir) ?= ?"(?:[^"\\]|\\.)*"'), r"\1=<kernel>"),
    (re.compile(r'fingerprint_before_lhs="[0-9a-f]+"'), "fingerprint=<hash>"),
]


def program_lines(hlo_text: str) -> list:
  """The compiled program's lines without source locations: two trees that compile to the same
  kernels, buffers and schedule give equal lists wherever their files live. Pallas kernels'
  bodies are left out (their bytecode carries paths): compare those by their jaxprs."""
  lines = []
  for line in hlo_text.splitlines():
    if _SOURCE_TABLE.match(line):
      continue
    for pattern, repl in _SOURCE_INFO:
      line = pattern.sub(repl, line)
    lines.append(line)
  return lines
