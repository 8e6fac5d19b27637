"""The paper's claims and the verdict of each: fixed rules, written before any result was seen
and never tuned to a run.

  claims(rows, groups)   a verdict per claim: reproduced / partly / not / not run, with the
                         margins it rests on checked against seed noise (seeds.seed_groups)

A variant short of the target scale (min_tokens, min_seq_len of summary.rows) counts as not run.
"""
from ssmax_jax.reproduce.metrics import LONG_THETA, loss_at, needle_at, rise_at
from ssmax_jax.reproduce.seeds import seed_check

# Verdict rules (fixed).
FLAT = 0.05  # loss at the longest context within +5% of the loss at 1x: flat; above: degrades
NEEDLE_MULTIPLE = 10.0  # "about 10x the training length"
RETRIEVES = 0.5  # mean needle accuracy over depths >= 0.5: retrieves
FAILS = 0.1  # < 0.1: fails
CLEAR = 0.1  # an accuracy difference counts from 0.1 (0.05 is ~1 trial in 20 per cell)


def _longest_common(rws, theta):
  sets = [set(r["metrics"].get("loss", {}).get(theta, {})) for r in rws]
  common = set.intersection(*sets) if sets else set()
  return max((float(m) for m in common), default=None)


def _needle_multiple(rws, theta=LONG_THETA):
  """NEEDLE_MULTIPLE if every row has it, else the common multiple closest to it."""
  sets = [set(r["metrics"].get("needle", {}).get(theta, {})) for r in rws]
  common = set.intersection(*sets) if sets else set()
  if not common:
    return None
  return min((float(m) for m in common), key=lambda m: (abs(m - NEEDLE_MULTIPLE), m))


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
  ra, rb = (rise_at(r, LONG_THETA, m) for r in got) if m else (None, None)
  if ra is None or rb is None:
    return "not run", [], (f"no loss by position at RoPE θ×{LONG_THETA} at 1x and beyond in "
                           "both runs")
  flat_b, degrades_a = rb <= FLAT, ra > FLAT
  verdict = ("reproduced" if flat_b and degrades_a else "partly" if rb < ra else "not")
  rise = ("rise", LONG_THETA, m)
  margins = [(rise, "(b) - (a)", rb - ra), (rise, f"(b) - the flat line +{FLAT:.0%}", rb - FLAT)]
  extra = ""
  m1 = _longest_common(got, "1")
  if m1:
    r1a, r1b = rise_at(a, "1", m1), rise_at(b, "1", m1)
    if r1a is not None and r1b is not None:
      extra = f"; at θ×1: (a) {r1a:+.1%}, (b) {r1b:+.1%} at {m1:g}x"
  (a1, am), (b1, bm) = ((loss_at(r, LONG_THETA, 1), loss_at(r, LONG_THETA, m)) for r in got)
  return verdict, margins, (f"mean test loss at {m:g}x vs 1x the training length, "
                            f"RoPE θ×{LONG_THETA}: (a) {a1:.3f} -> {am:.3f} ({ra:+.1%}), "
                            f"(b) {b1:.3f} -> {bm:.3f} ({rb:+.1%}); flat = within +{FLAT:.0%}"
                            + extra)


def _claim_needle(rws):
  got, why = _need(rws, ["softmax", "ssmax"])
  if got is None:
    return "not run", [], why
  m = _needle_multiple(got)
  if m is None:
    return "not run", [], f"no needle grid at RoPE θ×{LONG_THETA} in both runs"
  a, b = (needle_at(r, m) for r in got)
  verdict = ("reproduced" if b >= RETRIEVES and a < FAILS
             else "partly" if b - a >= CLEAR else "not")
  margins = [(("needle", m), "(b) - (a)", b - a)]
  return verdict, margins, (f"needle accuracy (mean over depths) at {m:g}x, RoPE "
                            f"θ×{LONG_THETA}: (a) {a:.2f}, (b) {b:.2f}; retrieves = >= "
                            f"{RETRIEVES}, fails = < {FAILS}")


def _claim_bias(rws):
  got, why = _need(rws, ["ssmax", "ssmax_bias"])
  if got is None or _no_loss(got):
    return "not run", [], why or _no_loss(got)
  b, d = got
  faster = d["final_train_loss"] < b["final_train_loss"]
  m = _longest_common(got, LONG_THETA)
  rb, rd = (rise_at(b, LONG_THETA, m), rise_at(d, LONG_THETA, m)) if m else (None, None)
  if rb is None or rd is None:
    return "not run", [], f"no loss by position at RoPE θ×{LONG_THETA} in both runs"
  worse = rd > rb
  text = (f"final training loss (b) {b['final_train_loss']:.4f}, (d) {d['final_train_loss']:.4f} "
          f"(faster: {'yes' if faster else 'no'}); loss rise 1x -> {m:g}x at θ×{LONG_THETA}: "
          f"(b) {rb:+.1%}, (d) {rd:+.1%} (generalises worse: {'yes' if worse else 'no'})")
  nm = _needle_multiple(got)
  if nm is not None:
    text += f"; needle at {nm:g}x: (b) {needle_at(b, nm):.2f}, (d) {needle_at(d, nm):.2f}"
  margins = [(("final_train_loss",), "(d) - (b)", d["final_train_loss"] - b["final_train_loss"]),
             (("rise", LONG_THETA, m), "(d) - (b)", rd - rb)]
  return _verdict(faster + worse, 2), margins, text


def _claim_switch_after(rws):
  got, why = _need(rws, ["softmax", "softmax_then_ssmax"])
  if got is None:
    return "not run", [], why
  a, e = got
  la, le = loss_at(a, "1", 1), loss_at(e, "1", 1)
  if la is None or le is None:
    return "not run", [], "no loss at 1x with the model's own RoPE θ in both"
  hurts = [le > la]
  margins = [(("loss", "1", 1.0), "(e) - (a)", le - la)]
  text = f"test loss at 1x, own θ: (a) {la:.4f}, (e) {le:.4f}"
  sets = [set(r["metrics"].get("needle", {}).get(LONG_THETA, {})) for r in got]
  common = set.intersection(*sets)
  if common:
    m = min(float(x) for x in common)
    aa, ae = needle_at(a, m), needle_at(e, m)
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
    vals = [rise_at(r, LONG_THETA, m) for r in got]
    if None not in vals:
      measures.append((f"loss rise 1x -> {m:g}x at θ×{LONG_THETA}", vals, "{:+.1%}",
                       ("rise", LONG_THETA, m)))
  nm = _needle_multiple(got)
  if nm is not None:
    measures.append((f"needle at {nm:g}x", [needle_at(r, nm) for r in got], "{:.2f}",
                     ("needle", nm)))
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


def claims(rws, groups=None) -> list[dict]:
  """[{'claim', 'verdict', 'numbers', 'seed_check', 'within_noise'}] for each claim of the paper,
  from `rows`; `groups` (seeds.seed_groups) checks the margins behind each verdict against seed
  noise (within_noise: how many lie within it)."""
  return [dict(claim=text, verdict=v, numbers=n, seed_check=check, within_noise=within)
          for text, fn in CLAIMS for v, margins, n in [fn(rws)]
          for check, within in [seed_check(margins, groups)]]
