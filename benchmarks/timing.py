"""Wall-clock timing of jitted calls and kernel-setting flags, shared by the benchmark entry
points."""
import time

import jax
import jax.numpy as jnp
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


def parse_settings(items, fields, example, rows=None, defaults=()):
  """[(int, ...)] from --tiles entries 'a:b:...' naming `fields` in order, where the last
  len(defaults) fields may be left out and take those defaults; a ValueError names the entry,
  the form and `example`, or, given `rows`, settings whose first field (rows per block) does
  not divide them."""
  out = []
  for item in items:
    try:
      values = tuple(map(int, item.split(":")))
    except ValueError:
      values = ()
    missing = len(fields) - len(values)
    if not 0 <= missing <= len(defaults):
      raise ValueError(f"--tiles entry {item!r} is not {':'.join(fields)} (e.g. {example}).")
    out.append(values + tuple(defaults[len(defaults) - missing:]))
  bad = [t for t in out if rows is not None and rows % t[0]]
  if bad:
    raise ValueError(f"--tiles {bad}: {fields[0]} must divide --rows={rows}.")
  return out


def max_abs_diff(got, want) -> float:
  """Largest |got - want| over paired arrays (compared in float32)."""
  return max(float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
             for a, b in zip(got, want))


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
