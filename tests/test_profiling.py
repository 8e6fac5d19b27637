"""The device-time summary of a profiler trace (ssmax_jax.train.profiling) and the developer's
analysis of traces and compiled HLO (benchmarks.trace_analysis, benchmarks.hlo_analysis)."""
import gzip
import json

import jax
import jax.numpy as jnp
import pytest

from benchmarks import hlo_analysis
from benchmarks import trace_analysis
from ssmax_jax.train import profiling


def _write_trace(path, events):
  with gzip.open(path, "wt") as f:
    json.dump({"traceEvents": events}, f)


def test_device_kernels_are_summed_per_step_and_categorised(tmp_path):
  meta = [dict(ph="M", name="process_name", pid=1, args=dict(name="/device:GPU:0")),
          dict(ph="M", name="process_name", pid=2, args=dict(name="/host:CPU"))]
  kernel = lambda name, dur, pid=1: dict(ph="X", name=name, pid=pid, tid=7, ts=0, dur=dur)
  events = meta + [kernel("sm90_xmma_gemm_bf16", 3000), kernel("sm90_xmma_gemm_bf16", 3000),
                   kernel("loop_add_fusion", 1000), kernel("cudnn_fmha_fwd", 2000),
                   kernel("PjitFunction(step)", 50_000, pid=2)]  # host: not device time
  path = tmp_path / "perfetto_trace.json.gz"
  _write_trace(path, events)
  summary = profiling.device_time_by_kernel(str(path), num_steps=2)
  assert summary["per_step_ms"] == pytest.approx(4.5)  # (6 + 1 + 2) ms over 2 steps
  assert summary["categories"][0] == ("matmul", pytest.approx(3.0), pytest.approx(6 / 9))
  assert dict((c, ms) for c, ms, _ in summary["categories"])["attention"] == pytest.approx(1.0)
  name, cat, ms, calls, share = summary["kernels"][0]
  assert (name, cat, calls) == ("sm90_xmma_gemm_bf16", "matmul", 1.0)
  assert "| matmul | 3.00 | 66.7% |" in profiling.format_summary(summary)


def test_device_idle_counts_every_gap_of_back_to_back_steps(tmp_path):
  meta = [dict(ph="M", name="process_name", pid=1, args=dict(name="/device:GPU:0"))]
  kernel = lambda name, ts, dur, tid=7: dict(ph="X", name=name, pid=1, tid=tid, ts=ts, dur=dur)
  # Two steps; in each, gemm [0, 100), attention on another stream [50, 150), then a 30 us wait
  # before the norm [180, 200). Between the steps the device waits 50 us.
  events = meta
  for start in (0, 250):
    events += [kernel("gemm", start, 100), kernel("fmha", start + 50, 100, tid=8),
               kernel("norm", start + 180, 20)]
  path = tmp_path / "perfetto_trace.json.gz"
  _write_trace(path, events)
  idle = trace_analysis.device_idle(str(path), num_steps=2)
  assert idle["span_ms"] == pytest.approx(0.225)  # [0, 450) over two steps
  assert idle["busy_ms"] == pytest.approx(0.170)  # [0, 150) and [180, 200) merged per step
  assert idle["idle_ms"] == pytest.approx(0.055)  # 2 x 30 us inside, 50 us between, per step
  assert idle["gaps"] == [("fmha", "norm", pytest.approx(0.030), 1.0),
                          ("norm", "gemm", pytest.approx(0.025), 0.5)]
  text = trace_analysis.format_idle(idle)
  assert "0.23 ms = busy 0.17 + idle 0.06" in text and "| `norm` | `gemm` | 0.025 | 0.5 |" in text


def test_host_events_sum_the_host_annotations_by_name(tmp_path):
  meta = [dict(ph="M", name="process_name", pid=1, args=dict(name="/device:GPU:0")),
          dict(ph="M", name="process_name", pid=2, args=dict(name="/host:CPU"))]
  event = lambda name, pid, ts, dur: dict(ph="X", name=name, pid=pid, tid=1, ts=ts, dur=dur)
  events = meta + [event("gemm", 1, 0, 900), event("Execute", 2, 0, 400),
                   event("Execute", 2, 1000, 600), event("BlockHostUntilReady", 2, 1600, 100)]
  path = tmp_path / "perfetto_trace.json.gz"
  _write_trace(path, events)
  rows = trace_analysis.host_events(str(path), num_steps=2)
  assert rows == [("Execute", pytest.approx(0.5), 1.0),
                  ("BlockHostUntilReady", pytest.approx(0.05), 0.5)]
  assert "| `Execute` | 0.500 | 1 |" in trace_analysis.format_host_events(rows)


def test_trace_steps_on_this_machine(tmp_path):
  f = jax.jit(lambda x: jnp.tanh(x @ x))
  x = jnp.ones((256, 256))
  f(x).block_until_ready()
  path = trace_analysis.trace_steps(lambda: f(x), 2, str(tmp_path))
  summary = profiling.device_time_by_kernel(path, 2)
  assert summary["per_step_ms"] > 0 and summary["kernels"]
  with pytest.raises(ValueError, match="num_steps=0"):
    trace_analysis.trace_steps(lambda: None, 0, str(tmp_path))


def _two_fusions(x):
  y = jnp.tanh(x @ x)  # line A
  return jnp.sum(jnp.exp(y) * 2.0, axis=-1)  # line B


def test_fusion_sources_name_the_code_of_each_kernel(tmp_path):
  import inspect
  first = inspect.getsourcelines(_two_fusions)[1]
  line_a, line_b = first + 1, first + 2
  f = jax.jit(_two_fusions)
  x = jnp.ones((128, 128))
  f(x).block_until_ready()
  sources = hlo_analysis.fusion_sources(f.lower(x).compile().as_text())
  assert sources, "no fusion found in the compiled module"
  here = "test_profiling.py:{} _two_fusions"
  assert set(sources.values()) <= {here.format(line_a), here.format(line_b),
                                   f"{here.format(line_a)}, {here.format(line_b)}",
                                   f"{here.format(line_b)}, {here.format(line_a)}"}
  assert any(here.format(line_b) in v for v in sources.values())
  # The kernels of a trace of the same function find their source (names as the trace has them).
  path = trace_analysis.trace_steps(lambda: f(x), 1, str(tmp_path))
  summary = profiling.device_time_by_kernel(path, 1)
  table = profiling.format_summary(summary, sources=sources)
  assert "| source |" in table and here.format(line_b) in table
  assert hlo_analysis.fusion_sources("") == {}


def test_fusion_sources_prefer_the_library_frame():
  from ssmax_jax.nn.layers import rope
  g = jax.jit(lambda x: rope(x, jnp.broadcast_to(jnp.arange(16), (2, 16)), 10000.0) * 3.0)
  x = jnp.ones((2, 16, 4, 8))
  sources = hlo_analysis.fusion_sources(g.lower(x).compile().as_text())
  assert any("ssmax_jax/nn/layers.py:" in v and " rope" in v for v in sources.values())


_HLO = """\
%fused_add (p0: bf16[4,8], p1: bf16[4,8]) -> bf16[4,8] {
  %p0 = bf16[4,8]{1,0} parameter(0)
  %p1 = bf16[4,8]{1,0} parameter(1)
  ROOT %add.3 = bf16[4,8]{1,0} add(%p0, %p1)
}

ENTRY %main.1 (x: bf16[4,8], w: bf16[8,8]) -> (bf16[4,8], f32[4]) {
  %x = bf16[4,8]{1,0} parameter(0)
  %w = bf16[8,8]{1,0} parameter(1)
  %custom-call.2 = (bf16[4,8]{1,0}, s8[1024]{0}) custom-call(%x, %w), custom_call_target="__cublas$lt$matmul"
  %gte.1 = bf16[4,8]{1,0} get-tuple-element(%custom-call.2), index=0
  %loop_add_fusion.7 = bf16[4,8]{1,0} fusion(%gte.1, %x), kind=kLoop, calls=%fused_add
  %loop_add_fusion.8 = bf16[4,8]{1,0} fusion(%loop_add_fusion.7, %x), kind=kLoop, calls=%fused_add
  %pallas_call.1 = (bf16[4,8]{1,0}, f32[4]{0}) custom-call(%loop_add_fusion.8), custom_call_target="__gpu$xla.gpu.triton"
  ROOT %t = (bf16[4,8]{1,0}, f32[4]{0}) tuple(%gte.1, %gte.1)
}
"""


def test_kernel_traffic_counts_operands_and_outputs_of_unfused_kernels():
  traffic = hlo_analysis.kernel_traffic(_HLO)
  # two add fusions: 2 operands + 1 output of 64 bytes each; the GEMM is left out; the Triton
  # call reads 64 bytes and writes a 64-byte and a 16-byte output
  assert traffic == {"loop_add_fusion": (2 * 3 * 64, 2), "__gpu$xla.gpu.triton": (144, 1)}
  assert "0.00 GB" in hlo_analysis.format_traffic(traffic)
  assert "__cublas$lt$matmul" in hlo_analysis.kernel_traffic(_HLO, skip=())


_THUNKS = """\
001: kCustomKernel   [source         | next=002 (1)  ] loop_add_fusion_7 grid: [1, 1, 1] threads: [8, 1, 1]  shared_memory: 0 bytes
002: kCublasLtMatmul [prev=001 (1)   | next=003 (1)  ] kCublasLtMatmul
003: kCustomKernel   [prev=002 (1)   | next=004 (1)  ] loop_add_fusion_8 grid: [2, 1, 1] threads: [16, 1, 1]  shared_memory: 0 bytes
004: kCustomKernel   [prev=003 (1)   | next=005 (1)  ] loop_add_fusion_8 grid: [2, 1, 1] threads: [16, 1, 1]  shared_memory: 0 bytes
"""


def test_elements_per_thread_ranks_xla_kernels_by_their_launch_dimensions():
  # 32 output elements: 8 threads take 4 each, 32 threads 1 each (the thin one, listed first,
  # with both of its launches); custom calls (GEMM, Triton) are not XLA's emitters: left out
  assert hlo_analysis.elements_per_thread(_HLO, _THUNKS, min_elements=1) == [
      ("loop_add_fusion.8", 32, 32, 2), ("loop_add_fusion.7", 32, 8, 1)]
  assert hlo_analysis.elements_per_thread(_HLO, _THUNKS, min_elements=33) == []


def test_program_lines_ignore_where_the_sources_live_but_not_the_program():
  def step(path, op="add", kernel="abc1"):
    return (f'FileNames\n1 "{path}/ssmax_jax/nn/layers.py"\nStackFrames\n1 {{file_location_id=1}}\n'
            f'ENTRY %main {{\n  %a = f32[4]{{0}} {op}(%x, %y), metadata={{op_name="jit(step)" '
            f'source_file="{path}/ssmax_jax/nn/layers.py" source_line=3}}, stack_frame_id=1\n'
            f'  %k = f32[4]{{0}} custom-call(%a), custom_call_target="__gpu$xla.gpu.triton", '
            f'backend_config={{ir = "{kernel}\\22{path}"}}, '
            f'frontend_attributes={{fingerprint_before_lhs="{kernel.lower()}"}}\n}}\n')
  here = hlo_analysis.program_lines(step("/work/main"))
  assert here == hlo_analysis.program_lines(step("/elsewhere", kernel="def2"))
  assert here != hlo_analysis.program_lines(step("/work/main", op="multiply"))
