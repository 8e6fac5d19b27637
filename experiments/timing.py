"""Wall-clock timing of jitted calls and kernel-setting flags, shared by the benchmark entry
points."""
import time

import jax
import numpy as np


def mean_ms(fn, *args, steps: int) -> float:
  """Mean ms per call of `steps` calls issued back to back (as a training loop issues them),
  after one warm-up call that also compiles."""
  jax.block_until_ready(fn(*args))
  t0 = time.perf_counter()
  for _ in range(steps):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / steps * 1e3


def parse_settings(items, fields, example):
  """[(int, ...)] from --tiles entries 'a:b:...' naming `fields` in order; a ValueError names
  the entry, the form and `example`."""
  out = []
  for item in items:
    try:
      values = tuple(map(int, item.split(":")))
    except ValueError:
      values = ()
    if len(values) != len(fields):
      raise ValueError(f"--tiles entry {item!r} is not {':'.join(fields)} (e.g. {example}).")
    out.append(values)
  return out


def median_s(fn, *args, iters: int, warmup: int = 1) -> float:
  """Median seconds of `iters` calls, each waited for, after `warmup` calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))
