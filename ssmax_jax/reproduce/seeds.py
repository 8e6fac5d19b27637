"""Seed repeats: a variant trained again with other seeds (--config.seed, --config.data.seed).

A repeat enters no table or verdict; the spread between its seeds is the page's measure of noise,
and every margin a verdict rests on that lies within it is named next to the verdict.
"""
from ssmax_jax.reproduce import summary as summary_lib
from ssmax_jax.reproduce.metrics import format_measure, measure, measure_name
from ssmax_jax.reproduce.variants import MIN_SEQ_LEN, MIN_TOKENS, PAPER_VARIANTS


def seeds(summary) -> tuple[int, int]:
  """(model init seed, data order seed) of a call."""
  c = summary.get("config") or {}
  return int(c.get("seed", 0)), int((c.get("data") or {}).get("seed", 0))


def gather_repeats(found, dirs) -> list[tuple[str, dict]]:
  """[(dir, summary)] of calls that train variants of `found` again with other seeds."""
  first = {label: (d, s) for d, s in found for label in s["models"]}
  repeats, seen = [(d, summary_lib.read_summary(d)) for d in dirs if d], {}
  for d, s in repeats:
    if found and s["preset"] != found[0][1]["preset"]:
      raise ValueError(f"--repeats: {d} is preset {s['preset']!r} and --results "
                       f"{found[0][1]['preset']!r}; repeat a variant at the same scale.")
    for label in s["models"]:
      if label not in first:
        raise ValueError(f"--repeats: {d} repeats {label!r}, which no --results directory has; "
                         "pass the variant's first run in --results.")
      for other, other_s in [first[label]] + seen.get(label, []):
        if seeds(s) == seeds(other_s):
          raise ValueError(f"--repeats: {d} and {other} train {label!r} with the same seeds "
                           f"{seeds(s)}; a repeat sets other --config.seed and --config.data.seed.")
      seen.setdefault(label, []).append((d, s))
  return repeats


def seed_groups(rws, repeats, min_tokens=MIN_TOKENS, min_seq_len=MIN_SEQ_LEN) -> dict:
  """{variant: [its row, the repeats' rows...]} for each repeated variant at the target scale."""
  groups = {}
  for d, s in repeats:
    for v, r in summary_lib.rows([(d, s)], min_tokens, min_seq_len).items():
      if r is not None and r["at_scale"] and rws.get(v) and rws[v]["at_scale"]:
        groups.setdefault(v, [rws[v]]).append(r)
  return groups


def seed_spread(groups, key):
  """(largest max - min of `key` over the seeds of one repeated variant, that variant), or None."""
  best = None
  for v, group in groups.items():
    vals = [x for x in (measure(r, key) for r in group) if x is not None]
    if len(vals) > 1 and (best is None or max(vals) - min(vals) > best[0]):
      best = (max(vals) - min(vals), v)
  return best


def seed_check(margins, groups) -> tuple[str, int]:
  """(a sentence naming the margins a verdict rests on that are no larger than the seed spread,
  how many there are)."""
  within, checked = [], 0
  for key, what, margin in margins if groups else ():
    spread = seed_spread(groups, key)
    if spread is None:
      continue
    checked += 1
    if abs(margin) <= spread[0]:
      within.append(f"{what} {measure_name(key)} {format_measure(key, margin)} (seeds of "
                    f"{PAPER_VARIANTS[spread[1]].split(' ')[0]} differ by "
                    f"{format_measure(key, spread[0])})")
  if not checked:
    return "", 0
  if not within:
    exceed = "the margin exceeds" if checked == 1 else f"all {checked} margins exceed"
    return f"Seed check: {exceed} the seed spread.", 0
  return (f"Seed check: {len(within)} of {checked} margins {'lies' if len(within) == 1 else 'lie'}"
          " within the seed spread, so one seed per variant cannot tell "
          f"{'it' if len(within) == 1 else 'them'} from noise: " + "; ".join(within) + "."
          ), len(within)
