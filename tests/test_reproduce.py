"""The one-command reproduction (experiments.reproduce, ssmax_jax.reproduce): the claims
logic on synthetic summaries, the corpus cache, the plan and its refusals (fast); one cpu_tiny
variant end to end through the command lines (slow)."""
import datetime
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from ssmax_jax.configs import reproduce as presets
from ssmax_jax import data
from ssmax_jax.reproduce import (claims, metrics, page, plan, provenance, seeds, summary,
                                 variants)
from ssmax_jax.reproduce import run as run_lib
from ssmax_jax.train import default_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MULTIPLES = (1, 2, 5, 10, 20)


def _model(label, *, loss, rise50, needle10, kind="trained", tokens=int(5e8), seq_len=1024,
           needle1=0.9, needle_finetuned=True):
  """A summary model entry: mean loss `loss` at 1x rising linearly to (1 + rise50) x at 20x
  (theta x50), needle accuracy needle1 at 1x and needle10 from 10x on (after needle
  fine-tuning, or zero-shot)."""
  curve50 = {metrics.key(m): loss * (1 + rise50 * (m - 1) / 19) for m in MULTIPLES}
  curve1 = {metrics.key(m): loss * (1 + 0.5 * (m - 1) / 19) for m in MULTIPLES}
  acc = {metrics.key(m): needle1 if m < 10 else needle10 for m in MULTIPLES}
  tuned = dict(needle_finetune=dict(steps=500, batch_size=128, seq_len=1024)
               ) if needle_finetuned else {}
  return dict(kind=kind, attention=label, init_from=None, workdir="/w/" + label, steps=3815,
              tokens=tokens, batch_size=128, seq_len=seq_len, params=34_000_000,
              final_train_loss=loss, tokens_per_s=1.5e6, wall_s=330.0, spec=label,
              metrics=dict(loss={"1": curve1, "50": curve50}, needle={"50": acc},
                           attention=dict(context_length=8192, top_head=dict(layer=1, head=2,
                                                                             mean=0.4),
                                          mean_over_heads=0.01),
                           learned_s=dict(variant=label, s_mean=0.2)), **tuned)


def _summary(variant, models, preset="h200_small"):
  return dict(format=variants.FORMAT, variant=variant, preset=preset,
              command=f"python -m experiments.reproduce --preset={preset} --variant={variant}",
              created="2026-11-29T00:00:00+00:00",
              device=dict(platform="gpu", kind="NVIDIA H200", count=1),
              versions=dict(jax="0.11.2"), corpus=dict(name="site_packages", tokenizer="gpt2",
                                                      train_tokens=1, validation_tokens=1),
              recipe=dict(eval=dict(needle_trials=20)), models=models,
              files=list(variants.OUTPUT_FILES), wall_s=dict(total=500.0))


def _write(tmp_path, name, doc):
  d = tmp_path / name
  d.mkdir()
  (d / "summary.json").write_text(json.dumps(doc))
  return str(d)


def _paper_like(tmp_path, **over):
  """Six calls whose numbers follow the paper; `over` replaces model entries."""
  m = {
      "softmax": _model("softmax", loss=3.00, rise50=0.30, needle10=0.0),
      "softmax_then_ssmax": _model("softmax_then_ssmax", loss=3.05, rise50=0.10, needle10=0.3,
                                   kind="continued", needle1=0.6),
      "qwen_logn": _model("qwen_logn", loss=3.00, rise50=0.2, needle10=0.1, kind="inference"),
      "llama4_temperature": _model("llama4_temperature", loss=3.00, rise50=0.3, needle10=0.0,
                                   kind="inference"),
      "ssmax": _model("ssmax", loss=2.992, rise50=0.01, needle10=0.8),
      "ssmax_fixed": _model("ssmax_fixed", loss=2.995, rise50=0.02, needle10=0.6),
      "ssmax_bias": _model("ssmax_bias", loss=2.98, rise50=0.08, needle10=0.5),
      "ssmax_final10": _model("ssmax_final10", loss=2.999, rise50=0.04, needle10=0.7),
  }
  m.update(over)
  calls = {"softmax": ["softmax", "softmax_then_ssmax", "qwen_logn", "llama4_temperature"],
           "ssmax": ["ssmax"], "ssmax_fixed": ["ssmax_fixed"], "ssmax_bias": ["ssmax_bias"],
           "ssmax_final10": ["ssmax_final10"]}
  return [_write(tmp_path, call, _summary(call, {k: m[k] for k in labels if k in m}))
          for call, labels in calls.items() if any(k in m for k in labels)]


def _verdicts(dirs, **kw):
  return [c["verdict"] for c in claims.claims(summary.rows(summary.gather(dirs), **kw))]


def test_claims_follow_the_numbers(tmp_path):
  dirs = _paper_like(tmp_path)
  assert _verdicts(dirs) == ["reproduced"] * 6
  out = tmp_path / "results.md"
  text = page.render(summary.gather(dirs), str(out), command="report")
  assert out.read_text() == text
  assert "not run |" not in text and text.count("**reproduced**") == 6
  assert "(b) 2.9920 (-0.0080)" in text  # the numbers behind the verdict
  assert "[needle.png](ssmax/needle.png)" in text  # figure links relative to the page
  assert "](results.png)" in text and (tmp_path / "results.png").stat().st_size > 10_000
  assert "not train on the same corpus" not in text
  assert "| 500 steps of 128 x 1024 |" in text
  other = json.loads(open(os.path.join(dirs[1], "summary.json")).read())
  other["corpus"]["train_tokens"] = 2
  open(os.path.join(dirs[1], "summary.json"), "w").write(json.dumps(other))
  assert "not train on the same corpus" in page.render(summary.gather(dirs), str(out))

  # The opposite numbers: softmax better everywhere.
  worse = dict(ssmax=_model("ssmax", loss=3.1, rise50=0.4, needle10=0.0),
               ssmax_fixed=_model("ssmax_fixed", loss=3.1, rise50=0.4, needle10=0.0),
               ssmax_bias=_model("ssmax_bias", loss=3.2, rise50=0.3, needle10=0.0),
               softmax_then_ssmax=_model("softmax_then_ssmax", loss=2.9, rise50=0.3,
                                         needle10=0.0, needle1=0.95, kind="continued"),
               ssmax_final10=_model("ssmax_final10", loss=3.0, rise50=0.3, needle10=0.0))
  (tmp_path / "w").mkdir()
  assert _verdicts(_paper_like(tmp_path / "w", **worse)) == ["not"] * 6

  # In between: one SSMax variant below softmax, (b) rises less than (a) but not flat, etc.
  mixed = dict(ssmax=_model("ssmax", loss=2.99, rise50=0.2, needle10=0.2),
               ssmax_fixed=_model("ssmax_fixed", loss=3.1, rise50=0.2, needle10=0.0),
               ssmax_bias=_model("ssmax_bias", loss=2.98, rise50=0.1, needle10=0.0))
  (tmp_path / "m").mkdir()
  v = _verdicts(_paper_like(tmp_path / "m", **mixed))
  assert v[:4] == ["partly", "partly", "partly", "partly"]


def test_missing_or_small_variants_are_not_run(tmp_path):
  dirs = _paper_like(tmp_path)
  no_b = [d for d in dirs if not d.endswith(os.sep + "ssmax")]
  assert _verdicts(no_b) == ["not run", "not run", "not run", "not run", "reproduced", "not run"]
  small = _summary("ssmax", {"ssmax": _model("ssmax", loss=2.99, rise50=0.0, needle10=0.9,
                                             tokens=int(4.9e8))})
  small_dir = _write(tmp_path, "small", small)
  v = _verdicts(no_b + [small_dir])
  assert v[1] == "not run"
  assert _verdicts(no_b + [small_dir], min_tokens=0) == ["reproduced"] * 6
  text = page.render(summary.gather(no_b + [small_dir]), str(tmp_path / "r.md"))
  assert "below the issue's scale: ssmax" in text and "below scale" in text
  cut = _model("ssmax", loss=2.99, rise50=0.0, needle10=0.9, tokens=int(3e8))
  cut.update(stopped_early=True, steps=2289, planned_steps=3815)  # recipe.train_minutes ran out
  cut_dir = _write(tmp_path, "cut", _summary("ssmax", {"ssmax": cut}))
  text = page.render(summary.gather(no_b + [cut_dir]), str(tmp_path / "r2.md"))
  assert "below scale (trained), stopped by the time limit at step 2289 of 3815" in text

  no_loss = _model("ssmax", loss=2.99, rise50=0.0, needle10=0.9)
  no_loss["final_train_loss"] = None  # trained elsewhere, metrics not kept
  (tmp_path / "nl").mkdir()
  c = claims.claims(summary.rows(summary.gather(_paper_like(tmp_path / "nl", ssmax=no_loss))))
  assert c[0]["verdict"] == "not run" and "no training loss recorded for ssmax" in c[0]["numbers"]
  assert c[1]["verdict"] == "reproduced"

  # A zero-shot needle grid (no needle fine-tuning) is shown but counts in no claim.
  zero = _model("ssmax", loss=2.99, rise50=0.0, needle10=0.0, needle_finetuned=False)
  (tmp_path / "zs").mkdir()
  zs_dirs = _paper_like(tmp_path / "zs", ssmax=zero)
  c = claims.claims(summary.rows(summary.gather(zs_dirs)))
  assert c[2]["verdict"] == "not run" and c[0]["verdict"] == "reproduced"
  text = page.render(summary.gather(zs_dirs), str(tmp_path / "zs.md"))
  assert "| *0.90* | *0.90* | *0.90* | *0.00* | *0.00* | 20 | none: zero-shot, not counted |" in text

  empty = page.render(summary.gather([]), str(tmp_path / "none.md"))
  assert "](none.png)" not in empty and not (tmp_path / "none.png").exists()
  for name in variants.PAPER_VARIANTS.values():
    assert f"| {name} | not run |" in empty
  assert empty.count("**not run**") == len(claims.CLAIMS)
  assert "--variant=softmax --out=docs/results/h200_small/softmax" in empty


def test_seed_repeats_measure_noise_without_changing_verdicts(tmp_path):
  dirs = _paper_like(tmp_path)
  again = _summary("ssmax", {"ssmax": _model("ssmax", loss=2.985, rise50=0.01, needle10=0.75)})
  again["config"] = default_config().to_dict()
  again["config"].update(seed=1, data=dict(again["config"]["data"], seed=1))
  repeat = _write(tmp_path, "ssmax_seed1", again)
  found = summary.gather(dirs)
  repeats = seeds.gather_repeats(found, [repeat])
  rws = summary.rows(found)
  groups = seeds.seed_groups(rws, repeats)
  assert list(groups) == ["ssmax"] and len(groups["ssmax"]) == 2
  spread, variant = seeds.seed_spread(groups, ("final_train_loss",))
  assert variant == "ssmax" and spread == pytest.approx(0.007)
  with_noise, without = claims.claims(rws, groups), claims.claims(rws)
  assert [c["verdict"] for c in with_noise] == [c["verdict"] for c in without]
  assert [c["within_noise"] for c in without] == [0] * 6
  # Training loss: (c) - (a) = -0.005 lies within the 0.007 between (b)'s seeds; the rest do not.
  assert with_noise[0]["within_noise"] == 1
  assert "(c) - (a) final train loss -0.0050 (seeds of (b) differ by 0.0070)" in (
      with_noise[0]["seed_check"])
  # Needle at 10x: (b)'s seeds differ by 0.05, (b) - (a) is 0.8.
  assert with_noise[2]["seed_check"] == "Seed check: the margin exceeds the seed spread."

  out = tmp_path / "results.md"
  text = page.render(found, str(out), repeats=repeats)
  assert "## Seed repeats" in text and "| (b) SSMax, learned s | (1, 1) | 2.9850 |" in text
  assert "| (b) SSMax, learned s | spread (max - min) | 0.0070 |" in text
  assert "### `ssmax` (seed repeat: seeds (1, 1))" in text
  assert "no margin below is checked" in page.render(found, str(out))

  with pytest.raises(ValueError, match="same seeds"):
    seeds.gather_repeats(found, [dirs[1]])  # the first run of ssmax again
  lone = _write(tmp_path, "lone", dict(again, variant="ssmax_fixed",
                                       models={"ssmax_fixed": again["models"]["ssmax"]}))
  with pytest.raises(ValueError, match="which no --results directory has"):
    seeds.gather_repeats(summary.gather(dirs[:2]), [lone])
  with pytest.raises(ValueError, match="same scale"):
    seeds.gather_repeats(found, [_write(tmp_path, "tiny", dict(again, preset="cpu_tiny"))])
  r = subprocess.run([sys.executable, "-m", "experiments.reproduce_report",
                      f"--results={','.join(dirs)}", f"--repeats={repeat}", f"--out={out}"],
                     cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "and 1 seed repeats; claims: reproduced (margins within seed noise)," in r.stdout


def test_results_page_is_the_page_of_the_committed_summaries(tmp_path, monkeypatch):
  """docs/results.md renders byte for byte from docs/results/ by the command in its header."""
  committed = open(os.path.join(ROOT, "docs", "results.md"), encoding="utf-8").read()
  made = re.search(r"^Generated (\d{4}-\d\d-\d\d) by `([^`]+)`", committed, re.M)
  args = dict(a[2:].split("=", 1) for a in shlex.split(made.group(2))[3:])
  assert set(args) <= {"out", "results", "repeats"}, args  # flags this test passes on
  commits = set(re.findall(r"^- code: commit ([0-9a-f]{7}) ", committed, re.M))
  if shutil.which("git") is None or any(subprocess.run(
      ["git", "-C", ROOT, "cat-file", "-e", f"{c}^{{commit}}"], capture_output=True,
      check=False).returncode for c in commits):
    pytest.skip("the page names commits this checkout does not have (no git, or a shallow clone)")
  results, repeats = args["results"].split(","), args.get("repeats", "").split(",")
  for d in results + repeats:  # the same relative paths, so the page's links are the same
    if d:
      os.makedirs(tmp_path / d)
      shutil.copy(os.path.join(ROOT, d, "summary.json"), tmp_path / d)
  monkeypatch.chdir(tmp_path)
  found = summary.gather(results)
  text = page.render(found, args["out"], repeats=seeds.gather_repeats(found, repeats),
                     command=made.group(2), today=datetime.date.fromisoformat(made.group(1)))
  assert text == committed


def test_old_module_paths_and_layering():
  from ssmax_jax.evals import provenance as old_provenance, recipe, results
  assert recipe.run is run_lib.run and recipe.check_variant is variants.check_runnable
  assert results.render is page.render and results.CALL is variants.PRODUCED_BY
  assert results.VARIANTS is variants.PAPER_VARIANTS and results.SUMMARY_FORMAT == variants.FORMAT
  assert old_provenance.source_digest is provenance.source_digest
  r = subprocess.run([sys.executable, "-c", "import sys, ssmax_jax.evals; "
                      "assert 'ssmax_jax.reproduce' not in sys.modules"], cwd=ROOT, timeout=300)
  assert r.returncode == 0  # the evaluation library does not import the reproduction


def test_report_refuses_bad_results(tmp_path):
  with pytest.raises(ValueError, match="summary.json does not exist"):
    summary.gather([str(tmp_path)])
  a = _write(tmp_path, "a", _summary("ssmax", {"ssmax": _model("ssmax", loss=3, rise50=0,
                                                               needle10=1)}))
  b = _write(tmp_path, "b", _summary("ssmax", {"ssmax": _model("ssmax", loss=3, rise50=0,
                                                               needle10=1)}))
  with pytest.raises(ValueError, match="variant 'ssmax' is in both"):
    summary.gather([a, b])
  c = _write(tmp_path, "c", _summary("softmax", {"softmax": _model("softmax", loss=3, rise50=0,
                                                                   needle10=1)}, preset="cpu_tiny"))
  with pytest.raises(ValueError, match="mix presets"):
    summary.gather([a, c])


def test_model_metrics_from_eval_documents():
  docs = dict(
      loss_by_position=dict(results=[dict(label="x", curves=[
          dict(theta_scale=1.0, multiple=1.0, mean_loss=3.0),
          dict(theta_scale=50.0, multiple=20.0, mean_loss=3.5)])]),
      needle=dict(models=[dict(label="x", l_train=100)], results=[dict(label="x", grids=[
          dict(theta_scale=50.0, context_lengths=[100, 1000], accuracy=[[1.0, 0.5], [0.0, 0.0]])
      ])]),
      attention=dict(results=[dict(label="x", result=dict(
          context_length=800, trials=4, theta_scale=50.0, mean=[[0.1, 0.3]],
          top_heads=[dict(layer=0, head=1, mean=0.3, std=0.1)]))]),
      learned_s=dict(results=[dict(label="x", result=dict(variant="ssmax", s=[[0.2, 0.4]], b=None,
                                                         s_init=0.17, fixed_s=None))]))
  m = metrics.model_metrics(docs)["x"]
  assert m["loss"] == {"1": {"1": 3.0}, "50": {"20": 3.5}}
  assert m["needle"] == {"50": {"1": 0.75, "10": 0.0}}
  assert m["attention"]["top_head"] == dict(layer=0, head=1, mean=0.3)
  assert m["attention"]["mean_over_heads"] == pytest.approx(0.2)
  assert m["learned_s"]["s_mean"] == pytest.approx(0.3) and "b_mean" not in m["learned_s"]

  # Shorter multiples from the prefix of the longest curve (loss_from_prefix).
  lpp = [float(i) for i in range(40)]  # l_train 10, 4x
  docs = dict(loss_by_position=dict(results=[dict(label="x", curves=[
      dict(theta_scale=50.0, multiple=4.0, context_length=40, mean_loss=19.5,
           loss_per_position=lpp)])]))
  m = metrics.model_metrics(docs, prefix_multiples=(1, 2, 4, 8))["x"]
  assert m["loss"] == {"50": {"1": 4.5, "2": 9.5, "4": 19.5}}
  assert list(m["loss"]["50"]) == ["1", "2", "4"]


def test_corpus_is_prepared_once(tmp_path):
  docs = tmp_path / "docs"
  (docs / "sub").mkdir(parents=True)
  for i in range(4):
    (docs / "sub" / f"f{i}.py").write_text(f"def f{i}():\n    return {i}\n" * (i + 1))
  pattern, out = str(docs / "**" / "*.py"), str(tmp_path / "prep")
  index, reused = data.prepare_text_files_cached(pattern, "byte", out, val_fraction=0.25)
  assert not reused and index["num_files"] == 4 and index["splits"]["validation"]["num_docs"] == 1
  again, reused = data.prepare_text_files_cached(pattern, "byte", out, val_fraction=0.25)
  assert reused and again == index
  _, reused = data.prepare_text_files_cached(pattern, "byte", out, val_fraction=0.5)
  assert not reused  # another split
  (docs / "sub" / "f0.py").write_text("x = 1\n")
  index2, reused = data.prepare_text_files_cached(pattern, "byte", out, val_fraction=0.5)
  assert not reused and index2["fingerprint"] != index["fingerprint"]
  corpus = data.load_corpus(out, data.get_tokenizer("byte"), "train")
  assert corpus.num_tokens == index2["splits"]["train"]["num_tokens"]
  with pytest.raises(ValueError, match="matches no files"):
    data.prepare_text_files_cached(str(tmp_path / "none" / "*.py"), "byte", out)


def test_presets_and_plans():
  with pytest.raises(ValueError, match="--preset='nope' is unknown"):
    presets.get_config("nope")
  with pytest.raises(ValueError, match="produced by the call of --variant='softmax'"):
    variants.check_runnable("qwen_logn")
  with pytest.raises(ValueError, match="--variant='bogus' is unknown"):
    variants.check_runnable("bogus")

  # Needle fine-tuning: the paper's lr (Table 3) at full scale; the H200 probe's choice for the
  # small model (docs/reproduce.md).
  assert presets.get_config("paper_162m").recipe.needle_finetune.lr == 2e-5

  c = presets.get_config("h200_small")
  phases, models, retrieval = plan.plan(c, "softmax", "/w", "/data")
  a, e, a_needle, e_needle = phases
  assert a.config.model.attention == "softmax" and a.config.data.source == "/data"
  assert a.config.train.num_steps * 128 * 1024 >= 5e8 and a.config.train.seq_len >= 512
  assert a.config.train.max_minutes == 6.5 and e.config.train.max_minutes == 0.0
  assert e.config.init.workdir == a.workdir and e.config.model.attention == "ssmax"
  assert e.config.train.num_steps == plan.steps_for(0.05 * 5e8, 128, 1024)
  assert [m for m, _ in models] == ["softmax", "softmax_then_ssmax", "qwen_logn",
                                    "llama4_temperature"]
  assert models[2][1] == "qwen_logn=/w/softmax:qwen_logn"
  # Needle grid and attention analysis: the same labels after the paper's needle fine-tuning.
  assert [m for m, _ in retrieval] == [m for m, _ in models]
  assert retrieval[:3] == [("softmax", "softmax=/w/softmax_needle"),
                           ("softmax_then_ssmax", "softmax_then_ssmax=/w/softmax_then_ssmax_needle"),
                           ("qwen_logn", "qwen_logn=/w/softmax_needle:qwen_logn")]
  for tuned, parent in ((a_needle, a), (e_needle, e)):
    t, o = tuned.config.train, tuned.config.optimizer
    assert tuned.init_from == parent.label and tuned.config.init.workdir == parent.workdir
    assert tuned.config.data.kind == "needle" and tuned.config.model.attention == (
        parent.config.model.attention)
    assert (t.num_steps, t.batch_size, t.seq_len, o.lr, o.b2, o.weight_decay, o.schedule) == (
        500, 128, 1024, 3e-4, 0.999, 0.0, "cosine")
  from ssmax_jax.models.transformer import count_params
  from ssmax_jax.train import validate
  from ssmax_jax.train.checkpoint import abstract_model
  params = count_params(abstract_model(validate(a.config)))
  assert 20e6 <= params <= 40e6, params
  assert abstract_model(validate(a.config)).config.padded_vocab_size == 50304

  (f, f_needle), _, _ = plan.plan(c, "ssmax_final10", "/w", "/data")
  n = f.config.train.num_steps
  assert f.config.model.attention == "softmax" and f.config.switch.attention == "ssmax"
  assert f.config.switch.step == round(0.9 * n)
  assert f_needle.config.model.attention == "ssmax" and f_needle.config.switch.step == -1
  c.recipe.needle_finetune.steps = 0  # no fine-tuning: every evaluation reads the pretrained model
  (b,), models, retrieval = plan.plan(c, "ssmax_bias", "/w", "/data")
  assert b.config.model.attention == "ssmax_bias" and models == retrieval == [
      ("ssmax_bias", "ssmax_bias=/w/ssmax_bias")]
  assert "recipe" not in b.config and "recipe" in c


def test_workdir_of_another_run_is_refused(tmp_path):
  from ssmax_jax.train.config import to_json
  c = presets.get_config("cpu_tiny")
  ph = plan.plan(c, "ssmax", str(tmp_path), "shakespeare")[0][0]
  corpus = dict(validation_tokens=10**6)
  plan.check_plan([ph], c.recipe, corpus)  # nothing there yet
  os.makedirs(os.path.join(ph.workdir, "checkpoints", "30"))
  other = presets.get_config("cpu_tiny")
  del other["recipe"]
  other.model.attention, other.train.num_steps = "ssmax", 30
  with open(os.path.join(ph.workdir, "config.json"), "w") as f:
    f.write(to_json(other))
  plan.check_plan([ph], c.recipe, corpus)  # the same run (finished): evaluated, not retrained
  other.model.d_model = 64
  with open(os.path.join(ph.workdir, "config.json"), "w") as f:
    f.write(to_json(other))
  with pytest.raises(ValueError, match="config.model.d_model=64, this plan has 32"):
    plan.check_plan([ph], c.recipe, corpus)
  os.makedirs(os.path.join(ph.workdir, "checkpoints", "50"))
  with pytest.raises(ValueError, match="checkpoint at step 50, beyond this plan's 30 steps"):
    plan.check_plan([ph], c.recipe, corpus)
  fresh = plan.plan(c, "ssmax", str(tmp_path / "x"), "shakespeare")[0]
  with pytest.raises(ValueError, match="validation split has 100 tokens"):
    plan.check_plan(fresh, c.recipe, dict(validation_tokens=100))
  c.recipe.eval.needle_multiples = (1.0,)
  with pytest.raises(ValueError, match="shorter than a needle prompt"):
    plan.check_plan(fresh, c.recipe, corpus)


def test_command_line_refusals(tmp_path):
  def run(*args):
    return subprocess.run([sys.executable, "-m", "experiments.reproduce", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  r = run("--preset=nope", "--variant=ssmax", f"--out={tmp_path}")
  assert r.returncode != 0 and "--preset='nope' is unknown" in r.stderr
  r = run("--preset=cpu_tiny", "--variant=llama4_temperature", f"--out={tmp_path}",
          f"--workdir={tmp_path / 'w'}")
  assert r.returncode == 1 and "produced by the call of --variant='softmax'" in r.stderr
  assert not (tmp_path / "w").exists()  # refused before any training
  r = subprocess.run([sys.executable, "-m", "experiments.reproduce_report",
                      f"--results={tmp_path / 'missing'}", f"--out={tmp_path / 'r.md'}"],
                     cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 1 and "summary.json does not exist" in r.stderr


@pytest.mark.slow
def test_cpu_tiny_end_to_end(tmp_path):
  out, work = tmp_path / "softmax", tmp_path / "work"
  r = subprocess.run([sys.executable, "-m", "experiments.reproduce", "--preset=cpu_tiny",
                      "--variant=softmax", f"--out={out}", f"--workdir={work}",
                      f"--data_dir={tmp_path / 'data'}", "--config.recipe.tokens=12800"],
                     cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "tok/s" in r.stdout  # throughput printed while training
  files = sorted(os.listdir(out))
  assert files == sorted(variants.OUTPUT_FILES) and len(files) <= 8
  assert all(os.path.getsize(out / f) < 4 * 2**20 for f in files)
  s = json.loads((out / "summary.json").read_text())
  assert s["variant"] == "softmax" and s["preset"] == "cpu_tiny"
  assert "--config.recipe.tokens=12800" in s["command"]
  assert set(s["models"]) == {"softmax", "softmax_then_ssmax", "qwen_logn", "llama4_temperature"}
  a = s["models"]["softmax"]
  assert a["steps"] == 25 and a["tokens"] == 25 * 8 * 64 and a["seq_len"] == 64
  assert s["models"]["softmax_then_ssmax"]["tokens"] == a["tokens"] + 5 * 8 * 64
  for m in s["models"].values():
    assert set(m["metrics"]["loss"]) == {"1", "50"}
    assert set(m["metrics"]["loss"]["50"]) == {"1", "5", "20"}
    assert set(m["metrics"]["needle"]["50"]) == {"5", "10"}
  assert s["models"]["softmax_then_ssmax"]["metrics"]["learned_s"]["s_mean"] > 0
  # Needle grid and attention read the needle-fine-tuned models (qwen/llama4: the softmax one).
  tuned = {k: m["needle_finetune"] for k, m in s["models"].items()}
  assert all(t["steps"] == 3 and t["seq_len"] == 192 for t in tuned.values())
  assert tuned["qwen_logn"] == tuned["softmax"] != tuned["softmax_then_ssmax"]
  assert s["needle_finetune_config"]["data"]["kind"] == "needle"
  assert {"prep", "train_softmax", "train_softmax_then_ssmax", "train_softmax_needle",
          "eval_needle", "total"} <= set(s["wall_s"])
  assert s["versions"]["jax"] and s["device"]["kind"]
  lbp = json.loads((out / "loss_by_position.json").read_text())
  assert "loss_per_position" not in lbp["results"][0]["curves"][0]

  # Again: the finished runs are not trained again (--train_only stops after training).
  logged = (work / "softmax" / "metrics.jsonl").read_text()
  r = subprocess.run([sys.executable, "-m", "experiments.reproduce", "--preset=cpu_tiny",
                      "--variant=softmax", f"--out={out}", f"--workdir={work}",
                      f"--data_dir={tmp_path / 'data'}", "--config.recipe.tokens=12800",
                      "--train_only"], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0 and "trained softmax, softmax_then_ssmax" in r.stdout, r.stderr[-3000:]
  assert (work / "softmax" / "metrics.jsonl").read_text() == logged

  md = tmp_path / "results.md"
  r = subprocess.run([sys.executable, "-m", "experiments.reproduce_report", f"--results={out}",
                      f"--out={md}", "--min_tokens=0", "--min_seq_len=0"],
                     cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  text = md.read_text()
  assert "| (b) SSMax, learned s | not run |" in text
  assert "| (a) softmax | run (trained) | cpu_tiny | 12,800 | 64 |" in text
  assert "**partly**" in text or "**not**" in text or "**reproduced**" in text  # (e) vs (a)


def test_needle_probe_fine_tunes_each_budget_from_one_pretraining(tmp_path):
  args = [sys.executable, "-m", "benchmarks.needle_probe", "--preset=cpu_tiny",
          "--pretrain_tokens=3200", "--multiples=5", "--trials=2", f"--workdir={tmp_path / 'w'}",
          f"--data_dir={tmp_path / 'data'}"]
  r = subprocess.run(args + ["--settings=1e-3:2,3e-3:3"], cwd=ROOT, capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "| lr | steps | final answer loss | s | θ×1 5x | θ×50 5x |" in r.stdout
  assert "| 0.001 | 2 |" in r.stdout and "| 0.003 | 3 |" in r.stdout
  assert sorted(os.listdir(tmp_path / "w")) == ["needle_lr0.001_steps2", "needle_lr0.003_steps3",
                                                "softmax"]
  assert "choice: none" in r.stdout  # 1x was not measured
  r = subprocess.run(args + ["--settings=fast"], cwd=ROOT, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 1 and "--settings entry 'fast' is not LR:STEPS" in r.stderr


def test_needle_probe_choice_reads_only_the_baseline_at_1x():
  from benchmarks.needle_probe import choose
  row = lambda lr, steps, at1, at2: (lr, steps, 3.0, 10.0, {1.0: [0.9, 0.9], 50.0: [at1, at2]})
  rows = [row(3e-4, 500, 0.6, 0.0), row(1e-4, 500, 0.5, 0.0), row(2e-5, 500, 0.2, 0.9),
          row(1e-3, 300, 0.4, 1.0)]
  assert choose(rows, [1.0, 2.0]) == (1e-4, 500)  # lowest lr among the cheapest that retrieve
  assert choose(rows + [row(1e-3, 200, 0.7, 0.0)], [1.0, 2.0]) == (1e-3, 200)  # fewer steps
  assert choose(rows, [2.0, 1.0]) == (1e-3, 300)  # the column of 1x, wherever it is
  assert choose(rows, [2.0, 5.0]) is None
