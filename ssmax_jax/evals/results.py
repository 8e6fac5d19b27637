"""The results page of the reproduction (issue 6): summaries of finished variants -> tables and a
verdict per paper claim (../shared/ANCHORS.md), written to docs/results.md.

  model_metrics(docs)                 the numbers the page uses, from one call's evaluation JSON
  gather(dirs)                        [(dir, summary)] of experiments.reproduce outputs
  rows(found, min_tokens, min_seq_len)  one row per variant (the eight, run or not)
  claims(rows, repeats)               a verdict per claim: reproduced / partly / not / not run,
                                      with the margins it rests on checked against seed noise
  render(found, out_path, ...)        the markdown page

A repeat is a variant trained again with other seeds (--config.seed, --config.data.seed): it
enters no table or verdict, but the spread between its seeds is the page's measure of noise,
and every margin a verdict rests on that lies within it is named next to the verdict.

The verdicts follow fixed rules written here (thresholds below), decided before any result was
seen: they are never tuned to a run. A variant short of the issue's scale (min_tokens,
min_seq_len) counts as not run.
"""
import datetime
import json
import os

import numpy as np

from ssmax_jax.evals import common, provenance

# The eight variants, in the paper's order, with what each is.
VARIANTS = {
    "softmax": "(a) softmax",
    "ssmax": "(b) SSMax, learned s",
    "ssmax_fixed": "(c) SSMax, s fixed",
    "ssmax_bias": "(d) SSMax + learned bias",
    "softmax_then_ssmax": "(e) softmax, switched to SSMax after pretraining",
    "ssmax_final10": "(f) switched to SSMax for the final 10% of pretraining",
    "qwen_logn": "Qwen log-n at inference, on (a)",
    "llama4_temperature": "Llama 4 temperature at inference, on (a)",
}
# The call that produces each variant (experiments.reproduce --variant=...).
CALL = {"softmax_then_ssmax": "softmax", "qwen_logn": "softmax", "llama4_temperature": "softmax"}
SUMMARY_FORMAT = "ssmax_jax.reproduce.v1"
SUMMARY_FILE = "summary.json"
MIN_TOKENS = 5e8  # the issue's scale: at least 0.5B training tokens ...
MIN_SEQ_LEN = 512  # ... at sequence >= 512

# Verdict rules (fixed).
LONG_THETA = "50"  # long-context loss and needle are read at RoPE theta x50, the paper's setting
FLAT = 0.05  # loss at the longest context within +5% of the loss at 1x: flat; above: degrades
NEEDLE_MULTIPLE = 10.0  # "about 10x the training length"
RETRIEVES = 0.5  # mean needle accuracy over depths >= 0.5: retrieves
FAILS = 0.1  # < 0.1: fails
CLEAR = 0.1  # an accuracy difference counts from 0.1 (0.05 is ~1 trial in 20 per cell)


def key(x) -> str:
  """The JSON key of a multiple or theta scale: 1 -> '1', 2.5 -> '2.5'."""
  return f"{float(x):g}"


# --- Metrics of one call --------------------------------------------------------------------------

def model_metrics(docs: dict, prefix_multiples=()) -> dict:
  """{label: {'loss': {theta: {multiple: mean loss}}, 'needle': {theta: {multiple: mean accuracy
  over depths}}, 'attention': {...}, 'learned_s': {...}}} from the four evaluation documents of
  one call (kind -> the runner's returned doc).

  prefix_multiples: multiples m without a curve of their own get the mean loss of the first
  m x l_train positions of a longer curve (its loss_per_position; exact for causal attention,
  where a position's loss does not depend on later tokens).
  """
  out = {}
  lbp = docs.get("loss_by_position")
  if lbp:
    for entry in lbp["results"]:
      losses = out.setdefault(entry["label"], {}).setdefault("loss", {})
      for c in entry["curves"]:
        losses.setdefault(key(c["theta_scale"]), {})[key(c["multiple"])] = float(c["mean_loss"])
      for c in entry["curves"]:
        per_position = c.get("loss_per_position")
        by_m = losses[key(c["theta_scale"])]
        for pm in prefix_multiples:
          if per_position is not None and key(pm) not in by_m and pm < c["multiple"]:
            n = int(round(pm * c["context_length"] / c["multiple"]))
            by_m[key(pm)] = float(np.mean(per_position[:n]))
      for by_m in losses.values():
        ordered = sorted(by_m.items(), key=lambda kv: float(kv[0]))
        by_m.clear()
        by_m.update(ordered)
  nd = docs.get("needle")
  if nd:
    l_train = {m["label"]: m["l_train"] for m in nd["models"]}
    for entry in nd["results"]:
      m = out.setdefault(entry["label"], {})
      for g in entry["grids"]:
        acc = np.asarray(g["accuracy"], np.float64)  # [length, depth]
        m.setdefault("needle", {})[key(g["theta_scale"])] = {
            key(t / l_train[entry["label"]]): float(a) for t, a in zip(g["context_lengths"],
                                                                       acc.mean(axis=1))}
  at = docs.get("attention")
  if at:
    for entry in at["results"]:
      r = entry["result"]
      top = r["top_heads"][0]
      out.setdefault(entry["label"], {})["attention"] = dict(
          context_length=r["context_length"], theta_scale=r.get("theta_scale"),
          trials=r["trials"], top_head=dict(layer=top["layer"], head=top["head"],
                                            mean=float(top["mean"])),
          mean_over_heads=float(np.mean(r["mean"])))
  ls = docs.get("learned_s")
  if ls:
    for entry in ls["results"]:
      r = entry["result"]
      d = dict(variant=r["variant"], s_init=r["s_init"], fixed_s=r["fixed_s"])
      for name in ("s", "b"):
        if r[name] is not None:
          arr = np.asarray(r[name], np.float64)
          d[f"{name}_mean"] = float(arr.mean())
          d[f"{name}_mean_per_layer"] = arr.mean(axis=1).tolist()
      out.setdefault(entry["label"], {})["learned_s"] = d
  return out


# --- Gathering ------------------------------------------------------------------------------------

def read_summary(directory: str) -> dict:
  path = os.path.join(directory, SUMMARY_FILE)
  if not os.path.isfile(path):
    raise ValueError(f"--results: {path} does not exist; pass the --out directories of finished "
                     "`python -m experiments.reproduce` runs.")
  try:
    with open(path) as f:
      doc = json.load(f)
  except ValueError as e:
    raise ValueError(f"--results: {path} is not valid JSON ({e}); run that variant again.") from None
  if not isinstance(doc, dict) or doc.get("format") != SUMMARY_FORMAT:
    raise ValueError(f"--results: {path} is not a reproduce summary (format {SUMMARY_FORMAT}).")
  return doc


def gather(dirs) -> list[tuple[str, dict]]:
  """[(dir, summary)] of each directory; an empty list gives the page with nothing run."""
  found = [(d, read_summary(d)) for d in dirs if d]
  presets = sorted({s["preset"] for _, s in found})
  if len(presets) > 1:
    raise ValueError(f"--results mix presets {presets}: the claims compare variants at one scale; "
                     "report one preset at a time.")
  seen = {}
  for d, s in found:
    for label in s["models"]:
      if label in seen:
        raise ValueError(f"--results: variant {label!r} is in both {seen[label]} and {d}; pass "
                         "one of them.")
      seen[label] = d
  return found


def rows(found, min_tokens=MIN_TOKENS, min_seq_len=MIN_SEQ_LEN) -> dict:
  """{variant: row} for the eight variants: row None when not run, else the summary's model
  entry plus `dir`, `summary`, `at_scale` (tokens and sequence length at the issue's scale).

  A needle grid read from a model without needle fine-tuning (recipes before it was added) is
  kept as metrics['needle_zero_shot'] and counts in no claim: the paper fine-tunes first."""
  out = {v: None for v in VARIANTS}
  for d, s in found:
    for label, m in s["models"].items():
      at_scale = m["tokens"] >= min_tokens and m["seq_len"] >= min_seq_len
      metrics = dict(m["metrics"])
      if "needle_finetune" not in m and "needle" in metrics:
        metrics["needle_zero_shot"] = metrics.pop("needle")
      out[label] = dict(m, label=label, dir=d, summary=s, at_scale=at_scale, metrics=metrics)
  return out


# --- Claims ---------------------------------------------------------------------------------------

def _loss(row, theta, multiple):
  return row["metrics"].get("loss", {}).get(theta, {}).get(key(multiple))


def _longest_common(rws, theta):
  sets = [set(r["metrics"].get("loss", {}).get(theta, {})) for r in rws]
  common = set.intersection(*sets) if sets else set()
  return max((float(m) for m in common), default=None)


def _rise(row, theta, multiple):
  """Relative change of the mean loss from 1x to `multiple`x."""
  lo, hi = _loss(row, theta, 1), _loss(row, theta, multiple)
  return None if lo is None or hi is None else hi / lo - 1.0


def _needle_multiple(rws, theta=LONG_THETA):
  """NEEDLE_MULTIPLE if every row has it, else the common multiple closest to it."""
  sets = [set(r["metrics"].get("needle", {}).get(theta, {})) for r in rws]
  common = set.intersection(*sets) if sets else set()
  if not common:
    return None
  return min((float(m) for m in common), key=lambda m: (abs(m - NEEDLE_MULTIPLE), m))


def _acc(row, multiple, theta=LONG_THETA):
  return row["metrics"].get("needle", {}).get(theta, {}).get(key(multiple))


def _verdict(hits: int, total: int) -> str:
  return "reproduced" if hits == total else "partly" if hits else "not"


def _need(rws, names):
  """The rows of `names`, or the reason the claim is not run."""
  missing = [n for n in names if rws.get(n) is None]
  below = [n for n in names if rws.get(n) is not None and not rws[n]["at_scale"]]
  if missing or below:
    why = []
    if missing:
      why.append("not run: " + ", ".join(missing))
    if below:
      why.append("below the issue's scale: " + ", ".join(below))
    return None, "; ".join(why)
  return [rws[n] for n in names], ""


def _no_loss(got):
  missing = [r["label"] for r in got if r.get("final_train_loss") is None]
  return f"no training loss recorded for {', '.join(missing)}" if missing else ""


def _claim_training_loss(rws):
  got, why = _need(rws, ["softmax", "ssmax", "ssmax_fixed", "ssmax_bias"])
  if got is None or _no_loss(got):
    return "not run", [], why or _no_loss(got)
  a, b, c, d = (r["final_train_loss"] for r in got)
  lower = [x < a for x in (b, c, d)]
  d_lowest = d < min(b, c)
  verdict = ("reproduced" if all(lower) and d_lowest else "partly" if any(lower) else "not")
  loss = ("final_train_loss",)
  margins = [(loss, f"({n}) - (a)", x - a) for n, x in zip("bcd", (b, c, d))]
  margins.append((loss, "(d) - min((b), (c))", d - min(b, c)))
  return verdict, margins, (f"final training loss (mean over the last 10% of steps): (a) {a:.4f}, "
                   f"(b) {b:.4f} ({b - a:+.4f}), (c) {c:.4f} ({c - a:+.4f}), (d) {d:.4f} "
                   f"({d - a:+.4f}); {sum(lower)}/3 below (a), (d) lowest: "
                   f"{'yes' if d_lowest else 'no'}")


def _claim_flat_loss(rws):
  got, why = _need(rws, ["softmax", "ssmax"])
  if got is None:
    return "not run", [], why
  a, b = got
  m = _longest_common(got, LONG_THETA)
  ra, rb = (_rise(r, LONG_THETA, m) for r in got) if m else (None, None)
  if ra is None or rb is None:
    return "not run", [], f"no loss by position at RoPE θ×{LONG_THETA} at 1x and beyond in both runs"
  flat_b, degrades_a = rb <= FLAT, ra > FLAT
  verdict = ("reproduced" if flat_b and degrades_a else "partly" if rb < ra else "not")
  rise = ("rise", LONG_THETA, m)
  margins = [(rise, "(b) - (a)", rb - ra), (rise, f"(b) - the flat line +{FLAT:.0%}", rb - FLAT)]
  extra = ""
  m1 = _longest_common(got, "1")
  if m1:
    r1a, r1b = _rise(a, "1", m1), _rise(b, "1", m1)
    if r1a is not None and r1b is not None:
      extra = f"; at θ×1: (a) {r1a:+.1%}, (b) {r1b:+.1%} at {m1:g}x"
  return verdict, margins, (f"mean test loss at {m:g}x vs 1x the training length, RoPE θ×{LONG_THETA}: "
                   f"(a) {_loss(a, LONG_THETA, 1):.3f} -> {_loss(a, LONG_THETA, m):.3f} "
                   f"({ra:+.1%}), (b) {_loss(b, LONG_THETA, 1):.3f} -> "
                   f"{_loss(b, LONG_THETA, m):.3f} ({rb:+.1%}); flat = within +{FLAT:.0%}"
                   + extra)


def _claim_needle(rws):
  got, why = _need(rws, ["softmax", "ssmax"])
  if got is None:
    return "not run", [], why
  m = _needle_multiple(got)
  if m is None:
    return "not run", [], f"no needle grid at RoPE θ×{LONG_THETA} in both runs"
  a, b = (_acc(r, m) for r in got)
  verdict = ("reproduced" if b >= RETRIEVES and a < FAILS
             else "partly" if b - a >= CLEAR else "not")
  return verdict, [(("needle", m), "(b) - (a)", b - a)], (f"needle accuracy (mean over depths) at {m:g}x, RoPE θ×{LONG_THETA}: (a) "
                   f"{a:.2f}, (b) {b:.2f}; retrieves = >= {RETRIEVES}, fails = < {FAILS}")


def _claim_bias(rws):
  got, why = _need(rws, ["ssmax", "ssmax_bias"])
  if got is None or _no_loss(got):
    return "not run", [], why or _no_loss(got)
  b, d = got
  faster = d["final_train_loss"] < b["final_train_loss"]
  m = _longest_common(got, LONG_THETA)
  rb, rd = (_rise(b, LONG_THETA, m), _rise(d, LONG_THETA, m)) if m else (None, None)
  if rb is None or rd is None:
    return "not run", [], f"no loss by position at RoPE θ×{LONG_THETA} in both runs"
  worse = rd > rb
  text = (f"final training loss (b) {b['final_train_loss']:.4f}, (d) {d['final_train_loss']:.4f} "
          f"(faster: {'yes' if faster else 'no'}); loss rise 1x -> {m:g}x at θ×{LONG_THETA}: "
          f"(b) {rb:+.1%}, (d) {rd:+.1%} (generalises worse: {'yes' if worse else 'no'})")
  nm = _needle_multiple(got)
  if nm is not None:
    text += f"; needle at {nm:g}x: (b) {_acc(b, nm):.2f}, (d) {_acc(d, nm):.2f}"
  margins = [(("final_train_loss",), "(d) - (b)", d["final_train_loss"] - b["final_train_loss"]),
             (("rise", LONG_THETA, m), "(d) - (b)", rd - rb)]
  return _verdict(faster + worse, 2), margins, text


def _claim_switch_after(rws):
  got, why = _need(rws, ["softmax", "softmax_then_ssmax"])
  if got is None:
    return "not run", [], why
  a, e = got
  la, le = _loss(a, "1", 1), _loss(e, "1", 1)
  if la is None or le is None:
    return "not run", [], "no loss at 1x with the model's own RoPE θ in both"
  hurts = [le > la]
  margins = [(("loss", "1", 1.0), "(e) - (a)", le - la)]
  text = f"test loss at 1x, own θ: (a) {la:.4f}, (e) {le:.4f}"
  sets = [set(r["metrics"].get("needle", {}).get(LONG_THETA, {})) for r in got]
  common = set.intersection(*sets)
  if common:
    m = min(float(x) for x in common)
    aa, ae = _acc(a, m), _acc(e, m)
    hurts.append(aa - ae >= CLEAR)
    margins.append((("needle", m), "(a) - (e)", aa - ae))
    text += f"; needle at {m:g}x (shortest), θ×{LONG_THETA}: (a) {aa:.2f}, (e) {ae:.2f}"
  return _verdict(sum(hurts), len(hurts)), margins, text + f" ({sum(hurts)}/{len(hurts)} worse)"


def _claim_switch_during(rws):
  got, why = _need(rws, ["softmax", "ssmax", "ssmax_final10"])
  if got is None:
    return "not run", [], why
  a, b, f = got
  measures = []
  m = _longest_common(got, LONG_THETA)
  if m:
    vals = [_rise(r, LONG_THETA, m) for r in got]
    if None not in vals:
      measures.append((f"loss rise 1x -> {m:g}x at θ×{LONG_THETA}", vals, "{:+.1%}",
                       ("rise", LONG_THETA, m)))
  nm = _needle_multiple(got)
  if nm is not None:
    measures.append((f"needle at {nm:g}x", [_acc(r, nm) for r in got], "{:.2f}", ("needle", nm)))
  if not measures:
    return "not run", [], "no long-context measures in all three runs"
  closer, informative, parts, margins = 0, 0, [], []
  for name, (va, vb, vf), fmt, measure in measures:
    parts.append(f"{name}: (a) {fmt.format(va)}, (b) {fmt.format(vb)}, (f) {fmt.format(vf)}")
    if abs(va - vb) > 1e-9:
      informative += 1
      closer += abs(vf - vb) < abs(vf - va)
      margins.append((measure, "|(f) - (a)| - |(f) - (b)|", abs(vf - va) - abs(vf - vb)))
      margins.append((measure, "(f) - (b)", vf - vb))
  text = "; ".join(parts) + f"; (f) closer to (b) than to (a) on {closer}/{informative} measures"
  if not informative:
    return "not", margins, text + " ((a) and (b) do not differ)"
  equal = all(abs(vf - vb) <= 1e-9 for _, (va, vb, vf), _, _ in measures)
  return ("not" if equal else _verdict(closer, informative)), margins, text


CLAIMS = (
    ("All SSMax variants reach lower training loss than softmax ((d) lowest; about 0.008 for (b)).",
     _claim_training_loss),
    ("(b) keeps test loss flat far beyond the training length where (a) degrades.",
     _claim_flat_loss),
    ("(b) retrieves the needle at about 10x the training length where (a) fails beyond short "
     "contexts.", _claim_needle),
    ("The bias (d) trains faster but generalises worse.", _claim_bias),
    ("(e) hurts short contexts.", _claim_switch_after),
    ("(f) is close to (b) but not equal.", _claim_switch_during),
)


# --- Seed repeats ---------------------------------------------------------------------------------

def seeds(summary) -> tuple[int, int]:
  """(model init seed, data order seed) of a call."""
  c = summary.get("config") or {}
  return int(c.get("seed", 0)), int((c.get("data") or {}).get("seed", 0))


def gather_repeats(found, dirs) -> list[tuple[str, dict]]:
  """[(dir, summary)] of calls that train variants of `found` again with other seeds."""
  first = {label: (d, s) for d, s in found for label in s["models"]}
  repeats, seen = [(d, read_summary(d)) for d in dirs if d], {}
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
  """{variant: [its row, the repeats' rows...]} for each repeated variant at the issue's scale."""
  groups = {}
  for d, s in repeats:
    for v, r in rows([(d, s)], min_tokens, min_seq_len).items():
      if r is not None and r["at_scale"] and rws.get(v) and rws[v]["at_scale"]:
        groups.setdefault(v, [rws[v]]).append(r)
  return groups


def measure(row, key):
  """A claim's measure of one row: ('final_train_loss',), ('loss', theta, multiple),
  ('rise', theta, multiple) or ('needle', multiple)."""
  kind = key[0]
  if kind == "final_train_loss":
    return row.get("final_train_loss")
  if kind == "needle":
    return _acc(row, key[1])
  return (_loss if kind == "loss" else _rise)(row, key[1], key[2])


def measure_name(key) -> str:
  kind = key[0]
  if kind == "final_train_loss":
    return "final train loss"
  if kind == "needle":
    return f"needle at {key[1]:g}x"
  return (f"test loss at {key[2]:g}x" if kind == "loss" else f"loss rise 1x -> {key[2]:g}x"
          ) + f", θ×{key[1]}"


def _fmt_measure(key, x) -> str:
  return {"final_train_loss": f"{x:.4f}", "loss": f"{x:.4f}", "rise": f"{x * 100:.1f} points",
          "needle": f"{x:.2f}"}[key[0]]


def seed_spread(groups, key):
  """(largest max - min of `key` over the seeds of one repeated variant, that variant), or None."""
  best = None
  for v, group in groups.items():
    vals = [x for x in (measure(r, key) for r in group) if x is not None]
    if len(vals) > 1 and (best is None or max(vals) - min(vals) > best[0]):
      best = (max(vals) - min(vals), v)
  return best


def _seed_check(margins, groups) -> tuple[str, int]:
  """(a sentence naming the margins a verdict rests on that are no larger than the seed spread,
  how many there are)."""
  within, checked = [], 0
  for key, what, margin in margins if groups else ():
    spread = seed_spread(groups, key)
    if spread is None:
      continue
    checked += 1
    if abs(margin) <= spread[0]:
      within.append(f"{what} {measure_name(key)} {_fmt_measure(key, margin)} (seeds of "
                    f"{VARIANTS[spread[1]].split(' ')[0]} differ by "
                    f"{_fmt_measure(key, spread[0])})")
  if not checked:
    return "", 0
  if not within:
    return (f"Seed check: {'the margin exceeds' if checked == 1 else f'all {checked} margins exceed'}"
            " the seed spread."), 0
  return (f"Seed check: {len(within)} of {checked} margins {'lies' if len(within) == 1 else 'lie'}"
          " within the seed spread, so one seed per variant cannot tell "
          f"{'it' if len(within) == 1 else 'them'} from noise: " + "; ".join(within) + "."
          ), len(within)


def claims(rws, groups=None) -> list[dict]:
  """[{'claim', 'verdict', 'numbers', 'seed_check', 'within_noise'}] for each claim of the paper,
  from `rows`; `groups` (seed_groups) checks the margins behind each verdict against seed noise
  (within_noise: how many lie within it)."""
  return [dict(claim=text, verdict=v, numbers=n, seed_check=check, within_noise=within)
          for text, fn in CLAIMS for v, margins, n in [fn(rws)]
          for check, within in [_seed_check(margins, groups)]]


# --- The page -------------------------------------------------------------------------------------

def command_for(variant: str, preset: str = "h200_small") -> str:
  call = CALL.get(variant, variant)
  return (f"python -m experiments.reproduce --preset={preset} --variant={call} "
          f"--out=docs/results/{preset}/{call}")


def _config_line(c) -> str:
  if not c:
    return "—"
  m, t, o = c["model"], c["train"], c["optimizer"]
  line = (f"d_model {m['d_model']}, {m['num_layers']} layers, {m['num_heads']} heads, d_ff "
          f"{m['d_ff']}, vocabulary {m['vocab_size']} (padded to a multiple of "
          f"{m['vocab_pad_multiple']}), {m['dtype']}; batch {t['batch_size']} x {t['seq_len']}, "
          f"{t['num_steps']} steps; AdamW lr {o['lr']:g} {o['schedule']}, warm-up "
          f"{o['warmup_steps']}, betas ({o['b1']:g}, {o['b2']:g}), weight decay "
          f"{o['weight_decay']:g}, clip {o['clip_norm']:g}")
  if c.get("switch", {}).get("step", -1) >= 0:
    line += f"; switched to {c['switch']['attention']} at step {c['switch']['step']}"
  return line + " (full config in the summary)"


def _fmt(x, spec):
  return "—" if x is None else format(x, spec)


CODE_KEYS = ("source_sha256", "git_commit", "git_dirty")


def _code_line(versions) -> str:
  """The commit that ran, found from the sources' digest (a summary's git_commit can be stale)."""
  digest = versions.get("source_sha256")
  commit = digest and provenance.commit_with_digest(digest)
  if commit:
    return (f"commit {commit[:7]} (its ssmax_jax/ and configs/ sources have the run's "
            f"source_sha256 {digest})")
  reported = versions.get("git_commit")
  return (f"source_sha256 {digest or 'not recorded'}, found in no commit of this checkout's main "
          f"line; the run's checkout reported commit {reported[:7] if reported else 'none'}"
          + (" with uncommitted changes" if versions.get("git_dirty") else ""))


def plot_comparison(rws, path: str, groups=None) -> bool:
  """Every variant that ran on one figure: mean test loss by context length at RoPE θ×1 and
  θ×50, and needle accuracy (fine-tuned models, θ×50). Variants below the issue's scale are
  dashed, seed repeats (`groups`) dotted in their variant's colour. Returns False (and writes
  nothing) when no variant has metrics."""
  ran = [(i, VARIANTS[v], r, "-" if r["at_scale"] else "--")
         for i, (v, r) in enumerate(rws.items()) if r]
  index = {v: i for i, v in enumerate(rws)}
  ran += [(index[v], f"{VARIANTS[v]}, seeds {seeds(r['summary'])}", r, ":")
          for v, group in (groups or {}).items() for r in group[1:]]
  if not ran:
    return False
  plt = common.pyplot()
  panels = [("loss", "1", "Mean test loss, RoPE θ×1", "mean loss over the context"),
            ("loss", LONG_THETA, f"Mean test loss, RoPE θ×{LONG_THETA}",
             "mean loss over the context"),
            ("needle", LONG_THETA, f"Needle accuracy after fine-tuning, θ×{LONG_THETA}",
             "exact match (mean over depths)")]
  fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
  for ax, (kind, theta, title, ylabel) in zip(axes, panels):
    ticks = set()
    for i, name, r, style in ran:  # one colour per variant on every page
      curve = r["metrics"].get(kind, {}).get(theta)
      if curve:
        xs = sorted(curve, key=float)
        ticks.update(float(x) for x in xs)
        ax.plot([float(x) for x in xs], [curve[x] for x in xs], marker="o", label=name,
                color=f"C{i}", linestyle=style)
    ax.set_xscale("log")
    ax.set_xticks(sorted(ticks), [f"{t:g}x" for t in sorted(ticks)])
    ax.minorticks_off()
    ax.set_xlabel("context length (x the training length)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.axvline(1.0, color="gray", linestyle=":", linewidth=1)
  axes[-1].set_ylim(-0.03, 1.03)
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=9)
  fig.tight_layout(rect=(0, 0.12, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def _repeat_tag(summary, found) -> str:
  """' (seed repeat: seeds (1, 1))' for a repeat's summary, '' for the first runs."""
  return "" if any(summary is s for _, s in found) else f" (seed repeat: seeds {seeds(summary)})"


def _seed_table(groups, needle_ms) -> list[str]:
  """The seed repeats: each repeated variant's measures per seed and their spread."""
  keys = [("final_train_loss",), ("loss", "1", 1.0), ("loss", LONG_THETA, 1.0)]
  longest = max(float(m) for g in groups.values() for r in g
                for m in r["metrics"].get("loss", {}).get(LONG_THETA, {"1": 0}))
  keys += [("rise", "1", longest), ("rise", LONG_THETA, longest)]
  keys += [("needle", m) for m in needle_ms]
  lines = ["## Seed repeats", "",
           "A repeated variant trains again with other seeds of the model's initialisation and "
           "the data order (`--config.seed`, `--config.data.seed`), everything else the same. The "
           "spread between its seeds is this page's measure of noise: the claims below name "
           "every margin that lies within it. Repeats enter no other table and no verdict.", "",
           "| variant | seeds (init, data) | " + " | ".join(measure_name(k) for k in keys) + " |",
           "|---|---|" + "---|" * len(keys)]
  for v, group in groups.items():
    for r in group:
      cells = [_fmt(measure(r, k), ".1%" if k[0] == "rise" else ".2f" if k[0] == "needle"
                    else ".4f") for k in keys]
      lines.append(f"| {VARIANTS[v]} | {seeds(r['summary'])} | " + " | ".join(cells) + " |")
    spreads = [seed_spread({v: group}, k) for k in keys]
    lines.append(f"| {VARIANTS[v]} | spread (max - min) | "
                 + " | ".join("—" if sp is None else _fmt_measure(k, sp[0])
                              for k, sp in zip(keys, spreads)) + " |")
  return lines + [""]


def render(found, out_path: str, *, repeats=(), min_tokens=MIN_TOKENS, min_seq_len=MIN_SEQ_LEN,
           command: str = "") -> str:
  """Writes the results page (markdown) to out_path and returns it; `repeats` (gather_repeats)
  adds the seed repeats and checks each verdict's margins against their spread."""
  rws = rows(found, min_tokens, min_seq_len)
  groups = seed_groups(rws, repeats, min_tokens, min_seq_len)
  out_dir = os.path.dirname(os.path.abspath(out_path))
  preset = found[0][1]["preset"] if found else "h200_small"
  multiples = sorted({float(m) for r in rws.values() if r for t in r["metrics"].get("loss", {})
                      .values() for m in t}) or [1.0, 2.0, 5.0, 10.0, 20.0]
  thetas = sorted({t for r in rws.values() if r for t in r["metrics"].get("loss", {})},
                  key=float) or ["1", "50"]
  needle_ms = sorted({float(m) for r in rws.values() if r for kind in ("needle", "needle_zero_shot")
                      for t in r["metrics"].get(kind, {}).values() for m in t}) or [
                          1.0, 2.0, 5.0, 10.0, 20.0]
  lines = ["# Results: reproducing the paper's claims", "",
           f"Generated {datetime.date.today().isoformat()} by `{command or 'python -m experiments.reproduce_report'}`"
           f" from {len(found)} result director{'y' if len(found) == 1 else 'ies'}. "
           "How to run and what each variant is: [reproduce.md](reproduce.md).", "",
           f"The issue's scale: at least {min_tokens:,.0f} training tokens at sequence >= "
           f"{min_seq_len} per variant; a variant below it counts as not run in the claims.", ""]

  corpora = {(c.get("name"), c.get("num_bytes"), c.get("train_tokens"), c.get("validation_tokens"))
             for c in (s["corpus"] for _, s in found)}
  if len(corpora) > 1:
    lines += ["**Warning: the calls did not train on the same corpus** (name, bytes, train and "
              "validation tokens): " + "; ".join(str(c) for c in sorted(corpora, key=str)) + ".",
              ""]
  lines += ["## Variants", "",
            "| variant | status | preset | tokens | seq len | params | steps | train s | "
            "tokens/s | final train loss | call wall s |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
  for v, name in VARIANTS.items():
    r = rws[v]
    if r is None:
      lines.append(f"| {name} | not run | | | | | | | | | |")
      continue
    s = r["summary"]
    status = ("run" if r["at_scale"] else "below scale") + (
        f" ({r['kind']}" + (f" from {r['init_from']})" if r.get("init_from") else ")"))
    if r.get("stopped_early"):  # recipe.train_minutes ran out before the planned steps
      status += f", stopped by the time limit at step {r['steps']} of {r['planned_steps']}"
    lines.append(
        f"| {name} | {status} | {s['preset']} | {r['tokens']:,} | {r['seq_len']} | "
        f"{r['params']:,} | {r['steps']} | {_fmt(r.get('wall_s'), '.0f')} | "
        f"{_fmt(r.get('tokens_per_s'), ',.0f')} | {_fmt(r.get('final_train_loss'), '.4f')} | "
        f"{_fmt(s['wall_s'].get('total'), '.0f')} |")
  lines.append("")

  lines += ["## Test loss by position", "",
            "Mean next-token loss over windows of the held-out split, by context length "
            "(multiples of the training length) and RoPE θ (×1: the model's; ×50: raised, no "
            "retraining).", "",
            "| variant | " + " | ".join(f"θ×{t} {m:g}x" for t in thetas for m in multiples) + " |",
            "|---|" + "---|" * (len(thetas) * len(multiples))]
  for v, name in VARIANTS.items():
    r = rws[v]
    cells = [_fmt(_loss(r, t, m), ".3f") if r else "not run" for t in thetas for m in multiples]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines.append("")

  lines += ["## Needle in a haystack", "",
            f"Exact-match accuracy of the 7-digit needle, mean over depths, RoPE θ×{LONG_THETA}, "
            "by context length, after the paper's needle fine-tuning (Table 3; the attention "
            "analysis below reads the same models). A grid of a model that was not fine-tuned "
            "is shown in italics and counts in no claim.", "",
            "| variant | " + " | ".join(f"{m:g}x" for m in needle_ms)
            + " | trials per cell | needle fine-tuning |",
            "|---|" + "---|" * (len(needle_ms) + 2)]
  for v, name in VARIANTS.items():
    r = rws[v]
    if r is None:
      lines.append(f"| {name} | " + " | ".join("not run" for _ in needle_ms) + " | | |")
      continue
    trials = r["summary"]["recipe"]["eval"]["needle_trials"]
    ft = r.get("needle_finetune")
    if ft:
      cells = [_fmt(_acc(r, m), ".2f") for m in needle_ms]
      lr = r["summary"]["recipe"].get("needle_finetune", {}).get("lr")
      tuning = f"{ft['steps']} steps of {ft['batch_size']} x {ft['seq_len']}" + (
          f", lr {lr:g}" if lr else "")
    else:
      zero = r["metrics"].get("needle_zero_shot", {}).get(LONG_THETA, {})
      cells = [f"*{zero[key(m)]:.2f}*" if key(m) in zero else "—" for m in needle_ms]
      tuning = "none: zero-shot, not counted"
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {trials} | {tuning} |")
  lines.append("")

  lines += ["## Attention to the needle and learned s", "",
            "| variant | context | top head (layer, head): mean attention to the needle | "
            "mean over heads | mean s | mean b |", "|---|---|---|---|---|---|"]
  for v, name in VARIANTS.items():
    r = rws[v]
    if r is None:
      lines.append(f"| {name} | not run | | | | |")
      continue
    at, ls = r["metrics"].get("attention", {}), r["metrics"].get("learned_s", {})
    top = at.get("top_head")
    lines.append(f"| {name} | {at.get('context_length', '—')} | "
                 + (f"L{top['layer']} H{top['head']}: {top['mean']:.3f}" if top else "—")
                 + f" | {_fmt(at.get('mean_over_heads'), '.4f')} | "
                 f"{_fmt(ls.get('s_mean'), '.4f')} | {_fmt(ls.get('b_mean'), '.4f')} |")
  lines.append("")

  if groups:
    lines += _seed_table(groups, needle_ms)
  lines += ["## The paper's claims", "",
            f"Rules (fixed in `ssmax_jax/evals/results.py`, never tuned to a run): long-context "
            f"loss and needle at RoPE θ×{LONG_THETA}; flat = the loss at the longest context "
            f"within +{FLAT:.0%} of the loss at 1x; retrieves = mean accuracy >= {RETRIEVES}, "
            f"fails = < {FAILS}; accuracy differences count from {CLEAR}.", ""]
  if not groups:
    lines += ["No variant was repeated with other seeds, so no margin below is checked against "
              "seed noise.", ""]
  for c in claims(rws, groups):
    check = f" *{c['seed_check']}*" if c["seed_check"] else ""
    lines.append(f"- **{c['verdict']}** — {c['claim']} {c['numbers']}.{check}")
  lines.append("")

  lines += ["## Figures", ""]
  figure = os.path.splitext(out_path)[0] + ".png"
  if plot_comparison(rws, figure, groups):
    lines += [f"![Every variant: loss and needle accuracy by context length]"
              f"({os.path.basename(figure)})", "",
              "Every variant by context length (dashed: below the issue's scale; dotted: a seed "
              "repeat). Per call:", ""]
  if not found:
    lines.append("None yet.")
  for d, s in [*found, *repeats]:
    rel = os.path.relpath(os.path.abspath(d), out_dir)
    lines.append(f"- `{s['variant']}`{_repeat_tag(s, found)} ({', '.join(s['models'])}): "
                 + ", ".join(f"[{f}]({rel}/{f})" for f in s["files"] if f.endswith(".png")))
  lines.append("")

  lines += ["## Commands, versions, devices", ""]
  done = {s["variant"] for _, s in found}
  for d, s in [*found, *repeats]:
    dev = s["device"]
    vers = ", ".join(f"{k} {v}" for k, v in s["versions"].items() if v and k not in CODE_KEYS)
    lines += [f"### `{s['variant']}`{_repeat_tag(s, found)}", "", "```", s["command"], "```", "",
              f"- device: {dev['count']} x {dev['kind']} ({dev['platform']}); created "
              f"{s['created']}", f"- versions: {vers}", "- code: " + _code_line(s["versions"]),
              f"- corpus: {s['corpus']['name']} ({s['corpus'].get('train_tokens', 0):,} train / "
              f"{s['corpus'].get('validation_tokens', 0):,} validation tokens, tokenizer "
              f"{s['corpus']['tokenizer']})",
              "- wall time (s): " + ", ".join(f"{k} {v}" for k, v in s["wall_s"].items()),
              "- config: " + _config_line(s.get("config")),
              f"- summary: [{os.path.join(os.path.relpath(os.path.abspath(d), out_dir), SUMMARY_FILE)}]"
              f"({os.path.join(os.path.relpath(os.path.abspath(d), out_dir), SUMMARY_FILE)})", ""]
  missing = [v for v in VARIANTS if v not in CALL and v not in done]
  if missing:
    lines += ["Not run yet (each is one device call; `softmax` also gives (e), qwen_logn and "
              "llama4_temperature):", "", "```"]
    lines += [command_for(v, preset) for v in missing]
    lines += ["```", ""]
  text = "\n".join(lines)
  os.makedirs(out_dir, exist_ok=True)
  with open(out_path, "w") as f:
    f.write(text)
  return text
