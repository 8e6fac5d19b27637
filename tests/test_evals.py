"""Evaluation suite: known answers on hand-built models, then every command end to end on a
checkpoint of the trainer (CPU, XLA attention, tiny grids)."""
import json
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssmax_jax import data
from ssmax_jax.evals import attention, common, loss_by_position, needle, report, runner
from ssmax_jax.models.transformer import Transformer, TransformerConfig, generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BYTE = data.get_tokenizer("byte")
# A byte-level haystack with sentence and line ends, long enough for every test here.
TEXT = ("The cat sat on the mat. A dog ran far away!\nIs it late? The night was long. "
        "Birds sang at dawn.\n") * 40
STREAM = BYTE.encode(TEXT)


def _model(attention_variant="ssmax", seed=0, **kw):
  cfg = TransformerConfig(**{**dict(vocab_size=257, d_model=32, num_layers=2, num_heads=4,
                                    num_kv_heads=2, d_ff=64, l_train=32, dtype="float32",
                                    implementation="xla", attention=attention_variant), **kw})
  return Transformer(cfg, rngs=nnx.Rngs(seed))


def test_loss_by_position_equals_a_direct_computation():
  model = _model()
  T, num = 48, 3
  res = loss_by_position.loss_by_position(model, STREAM, T, num_sequences=num, batch_size=2,
                                          rope_theta=5e5, window=10, chunk_tokens=64,
                                          show_progress=False)
  starts = loss_by_position.window_starts(len(STREAM), T, num)
  rows = np.stack([STREAM[s:s + T + 1] for s in starts])
  logp = jax.nn.log_softmax(model(jnp.asarray(rows[:, :-1]), rope_theta=5e5), -1)
  nll = -np.take_along_axis(np.asarray(logp), rows[:, 1:, None], -1)[..., 0]
  np.testing.assert_allclose(res["loss_per_position"], nll.mean(0), rtol=2e-5)
  assert res["window_starts"] == [0, 10, 20, 30, 40]
  np.testing.assert_allclose(res["windowed_loss"][-1], nll.mean(0)[40:].mean(), rtol=2e-5)
  np.testing.assert_allclose(res["mean_loss"], nll.mean(), rtol=2e-5)
  np.testing.assert_allclose(res["mean_loss_std"], nll.mean(1).std(), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(res["windowed_loss_std"][-1], nll[:, 40:].mean(1).std(), rtol=1e-4,
                             atol=1e-6)
  assert res["rope_theta"] == 5e5 and res["num_sequences"] == num
  with pytest.raises(ValueError, match="fewer than context length"):
    loss_by_position.window_starts(100, 100, 1)


def test_window_starts_at_documents_long_enough():
  doc_starts = [0, 10, 60, 70, 200, 230]  # lengths 10, 50, 10, 130, 30
  np.testing.assert_array_equal(loss_by_position.window_starts(230, 40, 5, doc_starts), [10, 70])
  np.testing.assert_array_equal(loss_by_position.window_starts(230, 40, 1, doc_starts), [10])
  with pytest.raises(ValueError, match="no document"):
    loss_by_position.window_starts(230, 200, 2, doc_starts)


@pytest.mark.parametrize("variant", ["ssmax_bias", "qwen_logn", "softmax"])
def test_last_query_probs_reproduce_every_layers_attention_output(variant):
  model = _model(variant, l_train=8)
  if variant == "ssmax_bias":  # per-head s and b that differ, as after training
    for i, attn in enumerate(model.attention_layers()):
      attn.logit_scale.s[...] = jnp.asarray([0.2, 0.5, 0.9, 1.3]) * (i + 1)
      attn.logit_scale.b[...] = jnp.asarray([0.3, -0.2, 0.0, 0.5])
  tokens = jnp.asarray(np.stack([STREAM[:40], STREAM[7:47]]))
  theta = 2e4
  probs = np.asarray(attention.last_query_probs(model, tokens, rope_theta=theta))
  assert probs.shape == (2, 2, 4, 40)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  x, delta = model.embed[...][tokens], None
  for layer, block in enumerate(model.blocks):
    attn, h = block.attn, block.attn_norm.add_norm(x, delta)[1]
    v = attn.v_proj(h).reshape(2, 40, 2, 8)
    v_N = jnp.repeat(v, 2, axis=2)  # query head n reads kv head n // 2
    row = jnp.einsum("bnt,btnh->bnh", probs[:, layer], v_N).reshape(2, 32)
    want = attn(h, rope_theta=theta)[:, -1]
    np.testing.assert_allclose(attn.o_proj(row), want, atol=2e-5)
    x, delta = block(x, delta, rope_theta=theta)


def test_uniform_attention_puts_span_length_over_T_on_the_needle():
  model = _model("ssmax")
  for attn in model.attention_layers():  # q = 0: every logit 0, whatever c is
    attn.q_proj.kernel[...] = jnp.zeros_like(attn.q_proj.kernel[...])
  res = attention.needle_attention(model, BYTE, STREAM, 200, trials=3, batch_size=2,
                                   show_progress=False)
  mean = np.asarray(res["mean"])
  assert mean.shape == (2, 4)
  span = res["needle_tokens"]
  assert span == [8, 8, 8]  # " 1234567" in bytes
  np.testing.assert_allclose(mean, 8 / 200, rtol=1e-5)
  np.testing.assert_allclose(res["std"], 0.0, atol=1e-6)
  assert len(res["top_heads"]) == 8 and len(res["depths"]) == 3


def test_span_mass_sums_inside_each_span():
  probs = np.zeros((2, 1, 1, 6), np.float32)
  probs[0, 0, 0] = [0.1, 0.2, 0.3, 0.4, 0.0, 0.0]
  probs[1, 0, 0] = [0.5, 0.0, 0.0, 0.0, 0.25, 0.25]
  np.testing.assert_allclose(attention.span_mass(probs, [(1, 3), (4, 6)])[:, 0, 0], [0.5, 0.5])


def test_needle_trial_prompt_and_answer():
  rng = np.random.default_rng(0)
  ex = needle.needle_trial(BYTE, STREAM, 150, 0.5, rng)
  assert len(ex["prompt"]) == 150 and ex["last_prompt_index"] == 149
  assert BYTE.decode(ex["answer"]) == f" {ex['number']}"
  s, e = ex["needle_span"]
  assert BYTE.decode(ex["prompt"][s:e]) == f" {ex['number']}"
  assert BYTE.decode(ex["prompt"]).endswith(f"The special magic {ex['city']} number is:")


def test_greedy_decode_equals_generate_and_teacher_forcing_agrees():
  model = _model("ssmax")
  prompts = np.stack([STREAM[:30], STREAM[5:35], STREAM[9:39]])
  got = needle.greedy_decode(model, prompts, 5, rope_theta=3e4)
  want = np.asarray(generate(model, jnp.asarray(prompts), 5, rope_theta=3e4))[:, 30:]
  np.testing.assert_array_equal(got, want)
  # Teacher forcing on the greedy output reproduces it; a wrong answer token is not matched.
  np.testing.assert_array_equal(
      needle.teacher_forced_argmax(model, prompts, got, rope_theta=3e4), got)
  wrong = got.copy()
  wrong[:, 2] = (wrong[:, 2] + 1) % 257
  assert (needle.teacher_forced_argmax(model, prompts, wrong, rope_theta=3e4)[:, 2]
          != wrong[:, 2]).all()


def test_needle_grid_generate_and_teacher_forcing_give_the_same_grid():
  model = _model("ssmax")
  kw = dict(trials=2, batch_size=3, seed=1, show_progress=False)
  gen = needle.needle_grid(model, BYTE, STREAM, [140, 170], [0.0, 1.0], **kw)
  tf = needle.needle_grid(model, BYTE, STREAM, [140, 170], [0.0, 1.0], method="teacher_forcing",
                          **kw)
  assert np.asarray(gen["accuracy"]).shape == (2, 2)
  assert gen["correct"] == tf["correct"] and gen["numbers"] == tf["numbers"]
  assert all(len(c) == 2 and all(len(n) == 7 for n in c) for row in gen["numbers"] for c in row)
  assert ((0 <= np.asarray(gen["accuracy"])) & (np.asarray(gen["accuracy"]) <= 1)).all()
  with pytest.raises(ValueError, match="too short"):
    needle.needle_grid(model, BYTE, STREAM, [40], [0.5], **kw)


def test_teacher_forced_grid_compiles_each_length_once():
  model = _model("softmax")
  messages = []
  handler = logging.Handler()
  handler.emit = lambda record: messages.append(record.getMessage())
  jax_logger, level = logging.getLogger("jax"), logging.getLogger("jax").level
  jax_logger.addHandler(handler)
  jax_logger.setLevel(logging.DEBUG)
  try:
    with jax.log_compiles():
      needle.needle_grid(model, BYTE, STREAM, [151, 163, 177], [0.5], trials=4, batch_size=5,
                         method="teacher_forcing", show_progress=False)
  finally:
    jax_logger.removeHandler(handler)
    jax_logger.setLevel(level)
  done = [m for m in messages if "Finished XLA compilation of jit(_teacher_forced)" in m]
  # 3 compilations, in parallel before the first forward; 6 would mean the calls compiled again.
  assert len(done) == 3, done


def test_memory_estimate_refuses_dense_attention_at_long_context():
  model = _model("ssmax")
  small = common.forward_bytes(model, 1, 512)
  big = common.forward_bytes(model, 1, 20480)
  assert big > 4 * 20480**2 * 4 > small  # the [B,N,T,T] float32 logits dominate under XLA
  with pytest.raises(ValueError, match=r"needs about .* GiB.*T x T"):
    common.check_fits(model, 1, 20480, limit=2**30)


def test_model_spec_parsing():
  s = common.ModelSpec.parse("base=runs/soft@200:qwen_logn")
  assert (s.label, s.workdir, s.step, s.variant) == ("base", "runs/soft", 200, "qwen_logn")
  assert common.ModelSpec.parse("runs/ssmax/").label == "ssmax"
  assert common.ModelSpec.parse("runs/soft:llama4_temperature").label == "soft:llama4_temperature"
  with pytest.raises(ValueError, match="unknown"):
    common.ModelSpec.parse("runs/soft:nope")
  with pytest.raises(ValueError, match="repeat"):
    common.parse_specs(["runs/a", "other/a"])


# --- End to end on a trainer checkpoint ----------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  from ssmax_jax.configs import test_tiny
  from ssmax_jax.train import train
  workdir = str(tmp_path_factory.mktemp("evals") / "ssmax")
  c = test_tiny.get_config()  # byte-level, l_train = seq_len = 32, Shakespeare
  c.train.num_steps, c.checkpoint.every_steps = 3, 3
  train(c, workdir)
  return workdir


def _models(run_dir):
  return [run_dir, f"soft={run_dir}:softmax"]


def test_commands_end_to_end(run_dir, tmp_path):
  out = str(tmp_path / "eval")
  loss = runner.run_loss_by_position(_models(run_dir), out, multiples=(1, 5), num_sequences=2,
                                     batch_size=2, documents_only=True, show_progress=False)
  assert [c["context_length"] for c in loss["results"][0]["curves"]] == [32, 160, 32, 160]
  assert [c["rope_theta"] for c in loss["results"][1]["curves"]] == [1e4, 1e4, 5e5, 5e5]
  curve = loss["results"][0]["curves"][1]
  assert len(curve["loss_per_position"]) == 160 and len(curve["windowed_loss"]) == 40
  assert 0 < curve["mean_loss"] < 2 * np.log(257)
  grid = runner.run_needle(_models(run_dir), out, lengths=(150, 180), depths=(0.0, 1.0),
                           trials=2, theta_scales=(1, 50), batch_size=2, show_progress=False)
  g = grid["results"][1]["grids"][1]
  assert np.asarray(g["accuracy"]).shape == (2, 2) and g["rope_theta"] == 5e5
  att = runner.run_attention(_models(run_dir), out, length=150, trials=3, batch_size=2,
                             show_progress=False)
  mean = np.asarray(att["results"][0]["result"]["mean"])
  assert mean.shape == (2, 2) and ((0 <= mean) & (mean <= 1)).all()
  s = runner.run_learned_s(_models(run_dir), out)
  assert np.asarray(s["results"][0]["result"]["s"]).shape == (2, 2)
  assert s["results"][1]["result"]["s"] is not None  # softmax at inference keeps the trained s
  for name in ("loss_by_position.json", "loss_by_position.png", "loss_by_position.md",
               "needle.json", "needle_ssmax_theta1.png", "needle_soft_theta50.png", "needle.md",
               "attention.json", "attention.png", "attention.md", "learned_s.json",
               "learned_s_ssmax.png", "learned_s.md"):
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  with open(os.path.join(out, "needle.json")) as f:
    doc = json.load(f)
  assert doc["format"] == common.FORMAT and doc["kind"] == "needle"
  assert [m["label"] for m in doc["models"]] == ["ssmax", "soft"]
  assert doc["models"][0]["step"] == 3 and doc["models"][1]["variant"] == "softmax"
  md = report.render(report.gather([out]), str(tmp_path / "docs" / "results.md"))
  for title in report.TITLES.values():
    assert title in md
  assert "](../eval/attention.png)" in md and "| 100% |" in md


def test_bad_input_stops_before_compute(run_dir, tmp_path):
  out = str(tmp_path)
  with pytest.raises(ValueError, match="does not exist"):
    runner.run_learned_s([str(tmp_path / "missing")], out)
  with pytest.raises(ValueError, match=r"step 7 is not among"):
    runner.run_learned_s([f"{run_dir}@7"], out)
  with pytest.raises(ValueError, match=r"GiB.*--memory_limit_gb"):
    runner.run_loss_by_position([run_dir], out, lengths=(640,), memory_limit_gb=0.01,
                                show_progress=False)
  with pytest.raises(ValueError, match="too short"):
    runner.run_needle([run_dir], out, multiples=(1,), show_progress=False)
  with pytest.raises(ValueError, match="pass --out"):
    runner.run_learned_s(_models(run_dir), "")
  with pytest.raises(ValueError, match="no evaluation results"):
    report.gather([out])
  assert not os.listdir(out)  # nothing written by the refused runs


def test_command_lines(run_dir, tmp_path):
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  out = str(tmp_path / "e")
  r = subprocess.run([sys.executable, "-m", "experiments.eval_learned_s", f"--models={run_dir}",
                      f"--out={out}"], cwd=ROOT, env=env, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  assert "mean s per layer" in r.stdout
  r = subprocess.run([sys.executable, "-m", "experiments.report", f"--runs={out}",
                      f"--out={tmp_path / 'r.md'}"], cwd=ROOT, env=env, capture_output=True,
                     text=True)
  assert r.returncode == 0, r.stderr
  assert "Learned s" in (tmp_path / "r.md").read_text()
  r = subprocess.run([sys.executable, "-m", "experiments.eval_needle",
                      f"--models={tmp_path / 'nope'}"], cwd=ROOT, env=env, capture_output=True,
                     text=True)
  assert r.returncode == 1 and "error: workdir" in r.stderr


def test_report_refuses_truncated_or_incomplete_results(tmp_path):
  (tmp_path / "config.json").write_text("{}")  # another file of a workdir: not a result, skipped
  (tmp_path / "needle.json").write_text('{"format": "ssmax_jax.eval.v1", "kind": "nee')
  with pytest.raises(ValueError, match="needle.json is not a readable evaluation result"):
    report.gather([str(tmp_path)])
  (tmp_path / "needle.json").write_text(json.dumps(
      {"format": common.FORMAT, "kind": "needle", "models": [{"label": "a"}], "results": []}))
  with pytest.raises(ValueError, match=r"lacks models\[\]\.l_train, models\[\]\.step"):
    report.gather([str(tmp_path)])
