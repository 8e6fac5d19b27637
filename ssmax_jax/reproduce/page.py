"""The results page (docs/results.md): tables of the eight variants (not run where absent), the
paper's claims with a verdict each, the figure, and each call's command, versions and device.

  render(found, out_path, repeats=..., ...)   summary.gather's [(dir, summary)] -> the page

Each section is one function returning its lines; evals.report writes the page.
"""
import datetime
import os

from ssmax_jax.evals import report
from ssmax_jax.reproduce import provenance
from ssmax_jax.reproduce.claims import CLEAR, FAILS, FLAT, RETRIEVES, claims
from ssmax_jax.reproduce.figure import plot_comparison
from ssmax_jax.reproduce.metrics import (LONG_THETA, format_measure, key, loss_at, measure,
                                         measure_name, needle_at)
from ssmax_jax.reproduce.seeds import seed_groups, seed_spread, seeds
from ssmax_jax.reproduce.summary import rows
from ssmax_jax.reproduce.variants import (MIN_SEQ_LEN, MIN_TOKENS, PAPER_VARIANTS, PRODUCED_BY,
                                          SUMMARY_FILE, command_for)

RULES_FILE = "ssmax_jax/reproduce/claims.py"  # named on the page as where the rules are fixed
CODE_KEYS = ("source_sha256", "git_commit", "git_dirty")  # in the code line, not the versions
DEFAULT_MULTIPLES = [1.0, 2.0, 5.0, 10.0, 20.0]  # columns of a page with nothing run


def _fmt(x, spec):
  return "—" if x is None else format(x, spec)


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


def _code_line(versions) -> str:
  """The commit that ran, found from the sources' digest (a summary's git_commit can be stale)."""
  digest = versions.get("source_sha256")
  commit = digest and provenance.commit_with_digest(digest)
  if commit:
    return (f"commit {commit[:7]} (its ssmax_jax/ and configs/ sources have the run's "
            f"source_sha256 {digest})")
  reported = versions.get("git_commit")
  if not reported and versions.get("ssmax-jax"):  # e.g. an installed wheel
    return (f"ssmax-jax {versions['ssmax-jax']} outside a git checkout, source_sha256 "
            f"{digest or 'not recorded'}")
  return (f"source_sha256 {digest or 'not recorded'}, found in no commit of this checkout's main "
          f"line; the run's checkout reported commit {reported[:7] if reported else 'none'}"
          + (" with uncommitted changes" if versions.get("git_dirty") else ""))


def _repeat_tag(summary, found) -> str:
  """' (seed repeat: seeds (1, 1))' for a repeat's summary, '' for the first runs."""
  return "" if any(summary is s for _, s in found) else f" (seed repeat: seeds {seeds(summary)})"


# --- Sections -------------------------------------------------------------------------------------

def _header(found, command, min_tokens, min_seq_len, today) -> list[str]:
  lines = ["# Results: reproducing the paper's claims", "",
           f"Generated {today.isoformat()} by "
           f"`{command or 'python -m experiments.reproduce_report'}` from {len(found)} result "
           f"director{'y' if len(found) == 1 else 'ies'}. "
           "How to run and what each variant is: [reproduce.md](reproduce.md).", "",
           f"The issue's scale: at least {min_tokens:,.0f} training tokens at sequence >= "
           f"{min_seq_len} per variant; a variant below it counts as not run in the claims.", ""]
  corpora = {(c.get("name"), c.get("num_bytes"), c.get("train_tokens"), c.get("validation_tokens"))
             for c in (s["corpus"] for _, s in found)}
  if len(corpora) > 1:
    lines += ["**Warning: the calls did not train on the same corpus** (name, bytes, train and "
              "validation tokens): " + "; ".join(str(c) for c in sorted(corpora, key=str)) + ".",
              ""]
  return lines


def _variants_table(rws) -> list[str]:
  lines = ["## Variants", "",
           "| variant | status | preset | tokens | seq len | params | steps | train s | "
           "tokens/s | final train loss | call wall s |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for v, name in PAPER_VARIANTS.items():
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
  return lines + [""]


def _loss_table(rws, thetas, multiples) -> list[str]:
  lines = ["## Test loss by position", "",
           "Mean next-token loss over windows of the held-out split, by context length "
           "(multiples of the training length) and RoPE θ (×1: the model's; ×50: raised, no "
           "retraining).", "",
           "| variant | " + " | ".join(f"θ×{t} {m:g}x" for t in thetas for m in multiples) + " |",
           "|---|" + "---|" * (len(thetas) * len(multiples))]
  for v, name in PAPER_VARIANTS.items():
    r = rws[v]
    cells = [_fmt(loss_at(r, t, m), ".3f") if r else "not run" for t in thetas for m in multiples]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return lines + [""]


def _needle_row(r, needle_ms) -> str:
  trials = r["summary"]["recipe"]["eval"]["needle_trials"]
  ft = r.get("needle_finetune")
  if ft:
    cells = [_fmt(needle_at(r, m), ".2f") for m in needle_ms]
    lr = r["summary"]["recipe"].get("needle_finetune", {}).get("lr")
    tuning = f"{ft['steps']} steps of {ft['batch_size']} x {ft['seq_len']}" + (
        f", lr {lr:g}" if lr else "")
  else:
    zero = r["metrics"].get("needle_zero_shot", {}).get(LONG_THETA, {})
    cells = [f"*{zero[key(m)]:.2f}*" if key(m) in zero else "—" for m in needle_ms]
    tuning = "none: zero-shot, not counted"
  return " | ".join(cells) + f" | {trials} | {tuning} |"


def _needle_table(rws, needle_ms) -> list[str]:
  lines = ["## Needle in a haystack", "",
           f"Exact-match accuracy of the 7-digit needle, mean over depths, RoPE θ×{LONG_THETA}, "
           "by context length, after the paper's needle fine-tuning (Table 3; the attention "
           "analysis below reads the same models). A grid of a model that was not fine-tuned "
           "is shown in italics and counts in no claim.", "",
           "| variant | " + " | ".join(f"{m:g}x" for m in needle_ms)
           + " | trials per cell | needle fine-tuning |",
           "|---|" + "---|" * (len(needle_ms) + 2)]
  for v, name in PAPER_VARIANTS.items():
    r = rws[v]
    if r is None:
      lines.append(f"| {name} | " + " | ".join("not run" for _ in needle_ms) + " | | |")
    else:
      lines.append(f"| {name} | " + _needle_row(r, needle_ms))
  return lines + [""]


def _attention_table(rws) -> list[str]:
  lines = ["## Attention to the needle and learned s", "",
           "| variant | context | top head (layer, head): mean attention to the needle | "
           "mean over heads | mean s | mean b |", "|---|---|---|---|---|---|"]
  for v, name in PAPER_VARIANTS.items():
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
  return lines + [""]


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
      lines.append(f"| {PAPER_VARIANTS[v]} | {seeds(r['summary'])} | " + " | ".join(cells) + " |")
    spreads = [seed_spread({v: group}, k) for k in keys]
    lines.append(f"| {PAPER_VARIANTS[v]} | spread (max - min) | "
                 + " | ".join("—" if sp is None else format_measure(k, sp[0])
                              for k, sp in zip(keys, spreads)) + " |")
  return lines + [""]


def _claims_section(rws, groups) -> list[str]:
  lines = ["## The paper's claims", "",
           f"Rules (fixed in `{RULES_FILE}`, never tuned to a run): long-context "
           f"loss and needle at RoPE θ×{LONG_THETA}; flat = the loss at the longest context "
           f"within +{FLAT:.0%} of the loss at 1x; retrieves = mean accuracy >= {RETRIEVES}, "
           f"fails = < {FAILS}; accuracy differences count from {CLEAR}.", ""]
  if not groups:
    lines += ["No variant was repeated with other seeds, so no margin below is checked against "
              "seed noise.", ""]
  for c in claims(rws, groups):
    check = f" *{c['seed_check']}*" if c["seed_check"] else ""
    lines.append(f"- **{c['verdict']}** — {c['claim']} {c['numbers']}.{check}")
  return lines + [""]


def _figures_section(rws, groups, found, repeats, out_path) -> list[str]:
  lines = ["## Figures", ""]
  figure = os.path.splitext(out_path)[0] + ".png"
  if plot_comparison(rws, figure, groups):
    lines += [f"![Every variant: loss and needle accuracy by context length]"
              f"({os.path.basename(figure)})", "",
              "Every variant by context length (dashed: below the issue's scale; dotted: a seed "
              "repeat). Per call:", ""]
  if not found:
    lines.append("None yet.")
  for d, s in [*found, *repeats]:
    rel = report.relative_to_page(d, out_path)
    lines.append(f"- `{s['variant']}`{_repeat_tag(s, found)} ({', '.join(s['models'])}): "
                 + ", ".join(f"[{f}]({rel}/{f})" for f in s["files"] if f.endswith(".png")))
  return lines + [""]


def _call_lines(d, s, found, out_path) -> list[str]:
  """One call's command, device, versions, code, corpus, wall times, config and summary link."""
  dev = s["device"]
  vers = ", ".join(f"{k} {v}" for k, v in s["versions"].items() if v and k not in CODE_KEYS)
  summary_path = os.path.join(report.relative_to_page(d, out_path), SUMMARY_FILE)
  return [f"### `{s['variant']}`{_repeat_tag(s, found)}", "", "```", s["command"], "```", "",
          f"- device: {dev['count']} x {dev['kind']} ({dev['platform']}); created "
          f"{s['created']}", f"- versions: {vers}", "- code: " + _code_line(s["versions"]),
          f"- corpus: {s['corpus']['name']} ({s['corpus'].get('train_tokens', 0):,} train / "
          f"{s['corpus'].get('validation_tokens', 0):,} validation tokens, tokenizer "
          f"{s['corpus']['tokenizer']})",
          "- wall time (s): " + ", ".join(f"{k} {v}" for k, v in s["wall_s"].items()),
          "- config: " + _config_line(s.get("config")),
          f"- summary: [{summary_path}]({summary_path})", ""]


def _commands_section(found, repeats, out_path) -> list[str]:
  lines = ["## Commands, versions, devices", ""]
  for d, s in [*found, *repeats]:
    lines += _call_lines(d, s, found, out_path)
  done = {s["variant"] for _, s in found}
  missing = [v for v in PAPER_VARIANTS if v not in PRODUCED_BY and v not in done]
  if missing:
    preset = found[0][1]["preset"] if found else "h200_small"
    lines += ["Not run yet (each is one device call; `softmax` also gives (e), qwen_logn and "
              "llama4_temperature):", "", "```"]
    lines += [command_for(v, preset) for v in missing]
    lines += ["```", ""]
  return lines


def _columns(rws):
  """(loss multiples, thetas, needle multiples) of every row that ran, or the defaults."""
  ran = [r for r in rws.values() if r]
  multiples = sorted({float(m) for r in ran for t in r["metrics"].get("loss", {}).values()
                      for m in t}) or DEFAULT_MULTIPLES
  thetas = sorted({t for r in ran for t in r["metrics"].get("loss", {})}, key=float) or ["1", "50"]
  needle_ms = sorted({float(m) for r in ran for kind in ("needle", "needle_zero_shot")
                      for t in r["metrics"].get(kind, {}).values() for m in t}) or DEFAULT_MULTIPLES
  return multiples, thetas, needle_ms


def render(found, out_path: str, *, repeats=(), min_tokens=MIN_TOKENS, min_seq_len=MIN_SEQ_LEN,
           command: str = "", today: datetime.date | None = None) -> str:
  """Writes the results page (markdown) to out_path, and its figure beside it, and returns the
  page; `repeats` (seeds.gather_repeats) adds the seed repeats and checks each verdict's margins
  against their spread. today: the page's date (default: today)."""
  rws = rows(found, min_tokens, min_seq_len)
  groups = seed_groups(rws, repeats, min_tokens, min_seq_len)
  multiples, thetas, needle_ms = _columns(rws)
  lines = _header(found, command, min_tokens, min_seq_len, today or datetime.date.today())
  lines += _variants_table(rws)
  lines += _loss_table(rws, thetas, multiples)
  lines += _needle_table(rws, needle_ms)
  lines += _attention_table(rws)
  if groups:
    lines += _seed_table(groups, needle_ms)
  lines += _claims_section(rws, groups)
  lines += _figures_section(rws, groups, found, repeats, out_path)
  lines += _commands_section(found, repeats, out_path)
  return report.write_page(lines, out_path)
