"""Where a traced step waits: the device's idle gaps between kernels and the host's trace events,
over steps issued back to back (bench_train --profile_steps). Reads the trace files that
ssmax_jax.train.profiling writes.
"""
import collections

import jax

from ssmax_jax.train import profiling


def trace_steps(run_step, num_steps: int, log_dir: str) -> str:
  """Issues `run_step()` num_steps times back to back under the profiler, as a training loop
  issues steps (JAX dispatches asynchronously), then waits for the last one's result; returns
  the trace file's path. Any wait of the device between two steps is then in the trace.
  """
  if num_steps < 1:
    raise ValueError(f"num_steps={num_steps} must be >= 1.")
  profiling.start_trace(log_dir)
  try:
    for _ in range(num_steps):
      out = run_step()
    jax.block_until_ready(out)
  finally:
    path = profiling.stop_trace(log_dir)
  return path


def device_idle(trace_path: str, num_steps: int, top: int = 10) -> dict:
  """Where a device waits over steps traced back to back: {'span_ms' (first kernel's start to
  the last one's end, per step), 'busy_ms', 'idle_ms' (per step; span = busy + idle), 'gaps':
  [(kernel before, kernel after, ms per step, gaps per step)], longest total first}. A wait
  between two steps shows as the pair (last kernel of a step, first kernel of the next).

  Kernels of all device streams are merged into one busy timeline; a gap is time none runs.
  """
  ops = sorted(profiling.trace_ops(trace_path), key=lambda e: e["ts"])
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
  events = profiling.trace_events(trace_path)
  device_pids = profiling.device_pids(events)
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
