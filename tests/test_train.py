"""Trainer tests on one CPU device: loss, resume, checkpoints, bad input, NaN, variants."""
import contextlib
import io
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssmax_jax.configs import test_tiny
from ssmax_jax import ops
from ssmax_jax.models import generate
from ssmax_jax.train import (Checkpointer, NonFiniteLossError, cross_entropy_sum,
                             default_config, load_model, read_metrics, train, validate)
from ssmax_jax.train import trainer as trainer_lib
from ssmax_jax.ops.cross_entropy import reference_cross_entropy_sum
from ssmax_jax.train.optim import make_optimizer
from ssmax_jax.train.step import make_train_step


def _config(**groups):
  c = test_tiny.get_config()
  for group, values in groups.items():
    c[group].update(**values)
  return c


def _losses(workdir):
  return [(r["step"], r["loss"]) for r in read_metrics(workdir)]


def test_fused_cross_entropy_matches_reference_with_padded_vocab():
  k = jax.random.split(jax.random.key(0), 4)
  B, T, D, V, real_V = 2, 8, 16, 40, 37
  h, w = jax.random.normal(k[0], (B, T, D)), jax.random.normal(k[1], (D, V))
  targets = jax.random.randint(k[2], (B, T), 0, real_V)
  mask = (jax.random.uniform(k[3], (B, T)) > 0.3).astype(jnp.float32)
  ref = lambda h, w: reference_cross_entropy_sum((h @ w)[..., :real_V], targets, mask)
  for chunk in (4, 8, 10_000):  # 4 chunks, 2 chunks, one chunk
    fused = lambda h, w: cross_entropy_sum(h, w, targets, mask, real_V, chunk)
    np.testing.assert_allclose(fused(h, w), ref(h, w), rtol=1e-6)
    got = jax.grad(lambda h, w: 2.0 * fused(h, w), (0, 1))(h, w)
    want = jax.grad(lambda h, w: 2.0 * ref(h, w), (0, 1))(h, w)
    for g, r in zip(got, want):
      np.testing.assert_allclose(g, r, atol=1e-5)


def test_cross_entropy_with_bf16_logits_is_the_loss_of_rounded_logits():
  k = jax.random.split(jax.random.key(1), 3)
  B, T, D, V = 2, 8, 16, 40
  h, w = jax.random.normal(k[0], (B, T, D)), jax.random.normal(k[1], (D, V))
  targets = jax.random.randint(k[2], (B, T), 0, V)
  mask = jnp.ones((B, T), jnp.float32)

  def rounded(h, w):  # the loss of bf16-rounded logits; the rounding passes gradients unchanged
    logits = h @ w
    logits += jax.lax.stop_gradient(logits.astype(jnp.bfloat16).astype(jnp.float32) - logits)
    return reference_cross_entropy_sum(logits, targets, mask)

  bf16 = lambda h, w: cross_entropy_sum(h, w, targets, mask, V, 8, "bfloat16")
  np.testing.assert_allclose(bf16(h, w), rounded(h, w), rtol=1e-6)
  exact = cross_entropy_sum(h, w, targets, mask, V, 8)
  assert abs(float(bf16(h, w) - exact)) > 1e-4  # the rounding is really there
  for g, r in zip(jax.grad(bf16, (0, 1))(h, w), jax.grad(rounded, (0, 1))(h, w)):
    np.testing.assert_allclose(g, r, atol=1e-5)
  with pytest.raises(ValueError, match="logits_dtype='float16' is not supported"):
    cross_entropy_sum(h, w, targets, mask, V, 8, "float16")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """One 20-step run of the tiny config with a profile of steps 13-14, shared by the tests
  below: (workdir, train's result, its metrics, what it printed)."""
  workdir = tmp_path_factory.mktemp("tiny")
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    result = train(_config(train=dict(profile_at_step=12, profile_steps=2)), str(workdir))
  return workdir, result, read_metrics(str(workdir)), printed.getvalue()


def test_tiny_logs_every_5_steps_with_input_wait(tiny_run):
  _, result, records, _ = tiny_run
  assert [r["step"] for r in records] == [5, 10, 15, 20]
  assert all(0.0 <= r["input_wait"] <= 1.0 for r in records[1:]), records
  assert result["step"] == 20


def test_loading_a_model_logs_no_library_warnings(tiny_run, caplog):
  workdir = str(tiny_run[0])
  with caplog.at_level("WARNING", logger="absl"):
    load_model(workdir)
    load_model(workdir)
  assert [r.getMessage() for r in caplog.records if r.name == "absl"] == []


def test_tiny_profile_writes_a_trace_and_a_table(tiny_run):
  # The profile of steps 13-14: a trace file and a device-time table in the output.
  workdir, _, _, printed = tiny_run
  assert "profile of steps 13-14" in printed
  assert list((workdir / "profile").rglob("perfetto_trace.json.gz"))


def test_tiny_loss_falls(tiny_run):
  records = tiny_run[2]
  assert records[-1]["loss"] < records[0]["loss"] - 1.0, records


def test_tiny_logs_s_per_layer_and_head(tiny_run):
  s = np.asarray(tiny_run[2][-1]["s"])
  assert s.shape == (2, 2)  # layers x heads
  assert not np.allclose(s, ops.default_s_init(32))  # s is learned


def test_tiny_saves_config_and_checkpoints(tiny_run):
  workdir = tiny_run[0]
  with open(workdir / "config.json") as f:
    assert json.load(f)["model"]["attention"] == "ssmax"
  assert Checkpointer(str(workdir), read_only=True).steps() == [10, 20]


def test_stop_and_resume_gives_the_same_losses(tmp_path):
  log = dict(log_every=1)
  train(_config(train=dict(num_steps=6, **log)), str(tmp_path / "full"))
  train(_config(train=dict(num_steps=3, **log)), str(tmp_path / "split"))
  train(_config(train=dict(num_steps=6, **log)), str(tmp_path / "split"))
  assert _losses(tmp_path / "split") == _losses(tmp_path / "full")
  assert len(_losses(tmp_path / "full")) == 6


def test_corrupt_latest_checkpoint_is_skipped_with_a_warning(tmp_path):
  config = _config(train=dict(num_steps=4), checkpoint=dict(every_steps=2, keep=3))
  train(config, str(tmp_path))
  params_dir = tmp_path / "checkpoints" / "4" / "params"
  for root, _, files in os.walk(params_dir):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  config.train.num_steps = 5
  with pytest.warns(UserWarning, match="checkpoint .*4 cannot be restored"):
    train(config, str(tmp_path))
  assert _losses(tmp_path)[-1][0] == 5
  assert Checkpointer(str(tmp_path), read_only=True).steps() == [2, 4, 5]  # resumed at 2
  assert os.listdir(tmp_path / "corrupt_checkpoints")


def _add_key(group, key):
  with group.unlocked():
    group[key] = 1.0


@pytest.mark.parametrize("change, message", [
    (lambda c: _add_key(c.train, "lerning_rate"), "unknown config key 'train.lerning_rate'"),
    (lambda c: c.model.update(num_heads=3), "num_heads=3 must divide d_model=32"),
    (lambda c: c.train.update(grad_accum_steps=3), "divisible by config.train.grad_accum"),
    (lambda c: c.mesh.update(shape=(2, 1, 1)), "uses 2 devices but there are 1"),
    (lambda c: c.model.update(vocab_size=100), "smaller than the 'byte' tokenizer's 257"),
    (lambda c: c.model.update(attention="sparsemax"), "variant='sparsemax' is unknown"),
    (lambda c: c.train.update(profile_at_step=19, profile_steps=3), "profile_at_step=19"),
    (lambda c: c.train.update(max_minutes=-1.0), "max_minutes=-1.0 must be >= 0"),
    (lambda c: c.train.update(loss_logits_dtype="fp8"), "loss_logits_dtype='fp8'"),
    (lambda c: c.train.update(loss_implementation="cuda"), "loss_implementation='cuda'"),
])
def test_bad_config_stops_before_training(tmp_path, change, message):
  config = _config()
  change(config)
  with pytest.raises(ValueError, match=message):
    train(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_loss_and_norm_implementations_default_to_none():
  # None (choose) stays overridable from the command line: a typed placeholder.
  config = default_config()
  assert config.train.loss_implementation is None and config.model.norm_implementation is None
  config.train.loss_implementation = "xla"
  config.model.norm_implementation = "pallas"
  for name in (None, "auto", "xla", "pallas"):
    validate(_config(train=dict(loss_implementation=name)))
  with pytest.raises(ValueError, match="loss_implementation='triton'; choose one of"):
    validate(_config(train=dict(loss_implementation="triton")))


def _write(path, array):
  with open(path, "wb") as f:
    f.write(np.asarray(array).tobytes())


@pytest.mark.parametrize("kind, message", [
    ("missing", "does not exist"),
    ("empty", "is empty"),
    ("corrupt", "corrupt"),
    ("big_ids", "holds id 300 >= vocab_size 257"),
])
def test_bad_data_stops_before_training(tmp_path, kind, message):
  path = tmp_path / "tokens.bin"
  if kind == "empty":
    _write(path, np.zeros((0,), np.uint16))
  elif kind == "corrupt":
    with open(path, "wb") as f:
      f.write(b"\x01\x02\x03")  # not a whole number of uint16 tokens
  elif kind == "big_ids":
    _write(path, np.full((1000,), 300, np.uint16))
  with pytest.raises(ValueError, match=message):
    train(_config(data=dict(source=str(path))), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_nan_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  config = _config(train=dict(num_steps=4, log_every=1), checkpoint=dict(every_steps=2))
  train(config, str(tmp_path))
  config.train.num_steps = 12
  huge = config.optimizer.copy_and_resolve_references()
  huge.lr = 1e38  # parameters overflow to inf, the loss becomes NaN (lr may not change on resume)
  monkeypatch.setattr(trainer_lib, "make_optimizer", lambda o, n: make_optimizer(huge, n))
  with pytest.raises(NonFiniteLossError, match="last good checkpoint is step 4"):
    train(config, str(tmp_path))
  assert Checkpointer(str(tmp_path), read_only=True).steps() == [2, 4]
  model, _ = load_model(str(tmp_path))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(nnx.state(model)))


def test_resuming_with_another_optimizer_chain_is_an_error(tmp_path):
  config = _config(train=dict(num_steps=2), checkpoint=dict(every_steps=2))
  train(config, str(tmp_path))
  config.optimizer.clip_norm = 0.0  # no clipping: another optimizer state structure
  config.train.num_steps = 4
  with pytest.raises(ValueError, match="optimizer.clip_norm: 1.0 in the checkpoints, 0.0 now"):
    train(config, str(tmp_path))
  config.optimizer.clip_norm = 1.0
  config.model.attention = "softmax"
  with pytest.raises(ValueError, match="model.attention: 'ssmax' in the checkpoints"):
    train(config, str(tmp_path))
  assert Checkpointer(str(tmp_path), read_only=True).steps() == [2]


def test_train_step_needs_one_sharding_per_state_leaf():
  treedef = jax.tree.structure({"a": 1, "b": 2})
  with pytest.raises(ValueError, match="1 leaf_shardings for a state of 2 leaves"):
    make_train_step(None, treedef, [None], None, None)


def test_switch_variant_adds_s_to_the_optimizer_state_and_keeps_moments():
  config = _config(model=dict(attention="softmax"))
  cfg = validate(config)
  tx = make_optimizer(config.optimizer, 10)
  mesh = trainer_lib.mesh_lib.make_mesh((1, 1, 1))
  st = trainer_lib._State.init(cfg, tx, mesh, config)
  batch = {k: jnp.asarray(v) for k, v in trainer_lib.make_batches(config).__next__().items()}
  with jax.set_mesh(mesh):
    st.step(batch)
  before = dict(nnx.to_flat_state(nnx.state(st.objects()[1])))
  trainer_lib._switch_variant(st, "ssmax", None, tx)
  after = dict(nnx.to_flat_state(nnx.state(st.objects()[1])))
  new = sorted(set(after) - set(before))
  assert new and all(p[-1] == "s" for p in new)
  assert len(new) == 2 * cfg.num_layers  # Adam mu and nu for every layer's s
  for path, v in before.items():
    np.testing.assert_array_equal(after[path].get_value(), v.get_value())
  model = st.objects()[0]
  np.testing.assert_allclose(model.blocks[0].attn.logit_scale.s[...],
                             ops.default_s_init(32), rtol=1e-6)
  with jax.set_mesh(mesh):
    metrics = st.step(batch)
  assert metrics["s"].shape == (2, 2) and np.isfinite(metrics["loss"])


@pytest.fixture(scope="module")
def switch_run(tmp_path_factory):
  """A softmax run switched to SSMax at step 10 of 20: (workdir, its metrics)."""
  workdir = tmp_path_factory.mktemp("switch")
  train(_config(model=dict(attention="softmax"), switch=dict(step=10, attention="ssmax")),
        str(workdir))
  return workdir, read_metrics(str(workdir))


def test_switch_during_training_logs_s_after_the_switch(switch_run):
  records = switch_run[1]
  assert [r["attention"] for r in records] == ["softmax", "softmax", "ssmax", "ssmax"]
  assert "s" not in records[1] and np.asarray(records[2]["s"]).shape == (2, 2)


def test_switch_checkpoints_load_with_their_variant_and_overrides(switch_run):
  workdir, records = switch_run
  # The checkpoint at step 10 predates the switch, the one at 20 follows it.
  assert load_model(str(workdir), 10)[0].config.attention == "softmax"
  model, loaded = load_model(str(workdir), overrides={"rope_theta": 5e5})
  assert model.config.attention == "ssmax" and loaded.model.attention == "ssmax"
  assert model.config.rope_theta == 5e5
  np.testing.assert_allclose(model.blocks[1].attn.logit_scale.s[...], records[-1]["s"][1],
                             rtol=1e-6)


def test_switched_model_runs_as_another_variant_and_generates(switch_run):
  workdir = switch_run[0]
  qwen, _ = load_model(str(workdir), overrides={"attention": "qwen_logn"})
  tokens = jnp.arange(16, dtype=jnp.int32)[None]
  assert np.isfinite(qwen(tokens)).all()
  model, _ = load_model(str(workdir), overrides={"rope_theta": 5e5})
  out = generate(model, tokens[:, :4], 6, temperature=0.8)
  assert out.shape == (1, 10) and (out[:, :4] == tokens[:, :4]).all()
  assert ((out >= 0) & (out < 257)).all()


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory):
  """A softmax base run, then a needle fine-tune from it as SSMax (variant (e)): the workdir."""
  tmp_path = tmp_path_factory.mktemp("finetune")
  base = _config(model=dict(attention="softmax"), train=dict(num_steps=5))
  train(base, str(tmp_path / "base"))
  tune = _config(model=dict(attention="ssmax", l_train=32),
                 data=dict(kind="needle", needle_min_context=200),
                 train=dict(num_steps=4, seq_len=256, batch_size=4, log_every=1),
                 optimizer=dict(lr=1e-4, b2=0.999, weight_decay=0.0, schedule="cosine",
                                warmup_steps=0),
                 init=dict(workdir=str(tmp_path / "base")))
  train(tune, str(tmp_path / "tune"))
  return tmp_path


def test_finetune_starts_a_fresh_step_count(finetune_run):
  records = read_metrics(str(finetune_run / "tune"))
  assert [r["step"] for r in records] == [1, 2, 3, 4]  # a fresh optimizer and step count


def test_finetune_needle_loss_mask_counts_only_the_answers(finetune_run):
  # Only the 7-digit answers count: a handful of tokens per row, not 4 x 256.
  assert all(4 <= r["tokens"] <= 4 * 8 for r in read_metrics(str(finetune_run / "tune")))


def test_finetune_to_ssmax_starts_s_at_its_default(finetune_run):
  # Variant (e): s starts at 1/mean(log n) over l_train and moves with the small lr.
  records = read_metrics(str(finetune_run / "tune"))
  np.testing.assert_allclose(records[0]["s"], ops.default_s_init(32), atol=1e-3)


def test_finetune_loads_both_variants(finetune_run):
  base_model, _ = load_model(str(finetune_run / "base"))
  tuned, _ = load_model(str(finetune_run / "tune"))
  assert tuned.config.attention == "ssmax" and base_model.config.attention == "softmax"


def test_sigterm_saves_and_stops_then_resumes(tmp_path, monkeypatch):
  calls = []
  original = trainer_lib.to_global

  def to_global_then_signal(batch, sharding):
    calls.append(1)
    if len(calls) == 3:  # SIGTERM arrives while step 3 runs
      signal.raise_signal(signal.SIGTERM)
    return original(batch, sharding)

  monkeypatch.setattr(trainer_lib, "to_global", to_global_then_signal)
  config = _config(model=dict(attention="ssmax_bias"), train=dict(num_steps=8, log_every=4))
  handler = signal.getsignal(signal.SIGTERM)
  result = train(config, str(tmp_path))
  assert result["stopped"] and result["step"] == 3
  assert Checkpointer(str(tmp_path), read_only=True).steps() == [3]
  assert signal.getsignal(signal.SIGTERM) == handler  # the trainer's handler is removed
  monkeypatch.setattr(trainer_lib, "to_global", original)
  assert train(config, str(tmp_path))["step"] == 8
  last = read_metrics(str(tmp_path))[-1]
  assert np.asarray(last["s"]).shape == np.asarray(last["b"]).shape == (2, 2)


def test_time_limit_saves_and_stops_at_a_log_step_then_resumes(tmp_path, capsys):
  config = _config(train=dict(num_steps=8, log_every=2, max_minutes=1e-6))
  result = train(config, str(tmp_path))
  assert result["stopped"] and result["step"] == 2  # the first log step is past the limit
  assert Checkpointer(str(tmp_path), read_only=True).steps() == [2]
  assert "time limit of 1e-06 min: saved step 2 and stopped." in capsys.readouterr().out
  config.train.max_minutes = 0.0
  assert train(config, str(tmp_path))["step"] == 8


def test_cli_rejects_an_unknown_config_key(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.train", "--config=configs/test_tiny.py",
       f"--workdir={tmp_path / 'run'}", "--config.train.lerning_rate=0.1"],
      cwd=root, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "unknown config key 'config.train.lerning_rate'" in proc.stderr
  assert not os.path.exists(tmp_path / "run")


def test_xla_flags_go_into_the_environment_before_jax_starts():
  flag = "--xla_gpu_enable_triton_gemm=false"
  # A fresh process, where no backend has started: the launcher's case.
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = ("import os; from ssmax_jax.configs import paper_162m; from ssmax_jax.train import apply_xla_flags;"
          "print(apply_xla_flags(paper_162m.get_config())); print(os.environ['XLA_FLAGS'])")
  env = dict(os.environ, XLA_FLAGS="--xla_dump_to=/tmp/nowhere", PYTHONPATH=root)
  out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                       text=True, timeout=120).stdout.split("\n")
  assert out[0] == out[1] == f"--xla_dump_to=/tmp/nowhere {flag}"


def test_xla_flags_after_jax_started_pass_if_in_effect_else_error(monkeypatch):
  from ssmax_jax.train import apply_xla_flags
  flag = "--xla_gpu_enable_triton_gemm=false"
  config = _config()
  config.xla_flags = flag
  # Here JAX has started: flags already in effect pass, new ones are an error, not ignored.
  jax.devices()
  monkeypatch.setenv("XLA_FLAGS", flag)
  assert apply_xla_flags(config) == flag
  monkeypatch.setenv("XLA_FLAGS", "")
  with pytest.raises(ValueError, match="must be set before JAX starts its backends"):
    apply_xla_flags(config)
  config.xla_flags = "xla_gpu_enable_triton_gemm=false"
  with pytest.raises(ValueError, match="config.xla_flags has"):
    validate(config)


def test_paper_config_computes_the_loss_in_one_chunk_per_micro_batch():
  # The measured setting (configs/paper_162m.py): one chunk of a micro-batch's tokens.
  from ssmax_jax.configs import paper_162m
  from ssmax_jax.ops.cross_entropy.api import _num_chunks
  t = paper_162m.get_config().train
  micro_batch = t.batch_size // t.grad_accum_steps
  assert _num_chunks(micro_batch, t.seq_len, t.loss_chunk_tokens) == 1
