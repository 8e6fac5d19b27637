"""Trainer faults: resumes with another config, two trainers, damaged checkpoints, torn metrics,
bad workdirs. One 4-step tiny run (checkpoints 2 and 4) is copied by the tests that need one."""
import glob
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from configs import test_tiny
from ssmax_jax.data import make_train_iterator
from ssmax_jax.train import Checkpointer, NonFiniteLossError, load_model, read_metrics, train
from ssmax_jax.train import config as config_lib
from ssmax_jax.train import trainer as trainer_lib
from ssmax_jax.train import workdir as workdir_lib
from ssmax_jax.train.checkpoint import DamagedCheckpointError, array_digests, verify_digests
from ssmax_jax.train.optim import make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(num_steps=4):
  c = test_tiny.get_config()
  c.train.update(num_steps=num_steps, log_every=1)
  c.checkpoint.update(every_steps=2, keep=3)
  return c


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("base") / "run"
  train(_config(), str(workdir))
  return workdir


@pytest.fixture
def run(base_run, tmp_path):
  """A copy of the 4-step run to change."""
  workdir = tmp_path / "run"
  shutil.copytree(base_run, workdir)
  return workdir


def _snapshot(workdir) -> dict:
  """Every file's path and content hash (the lock file aside)."""
  files = {}
  for path in sorted(glob.glob(f"{workdir}/**", recursive=True)):
    if os.path.isfile(path) and not path.endswith(workdir_lib.LOCK_FILE):
      with open(path, "rb") as f:
        files[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
  return files


def _damage_params(workdir, step):
  """Flips one byte of the largest array file of checkpoint `step`: the files stay intact."""
  path = max(glob.glob(f"{workdir}/checkpoints/{step}/params/**/d/*", recursive=True),
             key=os.path.getsize)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 0x10]))


# 1. Resume with another config.

@pytest.mark.parametrize("changes, named", [
    (dict(model=dict(d_model=64)), ["model.d_model: 32 in the checkpoints, 64 now"]),
    (dict(model=dict(vocab_size=260)), ["model.vocab_size: 257"]),
    (dict(model=dict(num_heads=4, d_ff=128)), ["model.num_heads: 2", "model.d_ff: 64"]),
    (dict(model=dict(num_layers=3)), ["model.num_layers: 2"]),
    (dict(data=dict(packing=True)), ["data.packing: False in the checkpoints, True now"]),
    (dict(data=dict(worker_count=2)), ["data.worker_count: 0 in the checkpoints, 2 now"]),
    (dict(optimizer=dict(lr=1e-2)), ["optimizer.lr"]),
])
def test_resume_with_another_config_stops_before_touching_anything(run, changes, named):
  config = _config(num_steps=6)
  for group, values in changes.items():
    config[group].update(**values)
  before = _snapshot(run)
  with pytest.raises(ValueError, match="does not match the checkpoints") as error:
    train(config, str(run))
  for text in named:
    assert text in str(error.value)
  assert "new --workdir" in str(error.value) and "set these keys back" in str(error.value)
  assert _snapshot(run) == before  # nothing moved, written or truncated
  model, saved = load_model(str(run))  # config.json still holds the config that trained it
  assert saved.restored_step == 4 and model.config.num_layers == 2


def test_resumable_keys_are_schema_keys():
  flat = config_lib._flat(config_lib.default_config())
  assert config_lib.RESUMABLE_KEYS <= set(flat), config_lib.RESUMABLE_KEYS - set(flat)
  assert "data.worker_count" not in config_lib.RESUMABLE_KEYS


def test_num_steps_may_not_change_under_a_cosine_schedule():
  saved, now = _config(), _config(num_steps=8)
  assert config_lib.resume_changes(saved, now) == []
  saved.optimizer.schedule = now.optimizer.schedule = "cosine"
  assert config_lib.resume_changes(saved, now) == [("train.num_steps", 4, 8)]


def test_data_worker_count_changes_the_batches():
  # Why data.worker_count is not resumable: grain interleaves its workers' batches.
  def first_batches(workers):
    it = make_train_iterator("shakespeare", "byte", 32, 8, worker_count=workers, packing=False)
    try:
      return [next(it)["inputs"] for _ in range(2)]
    finally:
      it.close()
  assert not all((a == b).all() for a, b in zip(first_batches(0), first_batches(2)))


def test_resumable_changes_resume_and_every_start_config_is_kept(run):
  config = _config(num_steps=6)
  config.train.update(log_every=2, max_minutes=60.0, progress_bar=False)
  config.checkpoint.update(every_steps=3, keep=4)
  config.mesh.shape = (1, 1, 1)
  assert train(config, str(run))["step"] == 6
  assert sorted(os.listdir(run / "configs")) == ["config_step0.json", "config_step4.json"]
  assert Checkpointer(str(run), read_only=True).steps() == [2, 4, 6]
  # Each checkpoint loads with the config of the start that trained it.
  assert load_model(str(run), 4)[1].train.log_every == 1
  assert load_model(str(run), 6)[1].train.log_every == 2
  assert workdir_lib.read_config(str(run)).checkpoint.every_steps == 3


def test_old_config_json_loads_with_a_warning_naming_its_keys():
  saved = json.loads(config_lib.to_json(_config()))
  saved["train"]["old_knob"] = 1
  del saved["checkpoint"]["restart_if_unreadable"]
  with pytest.warns(UserWarning, match=r"unknown keys \['train.old_knob'\].*missing keys "
                    r"\['checkpoint.restart_if_unreadable'\]"):
    config = config_lib.from_json(json.dumps(saved))
  assert config.checkpoint.restart_if_unreadable is False


def test_unreadable_checkpoints_stop_unless_restart_is_asked(run):
  for step in (2, 4):
    for path in glob.glob(f"{run}/checkpoints/{step}/params/**/d/*", recursive=True):
      with open(path, "wb") as f:
        f.write(b"garbage")
  before = _snapshot(run)
  with pytest.raises(ValueError, match="no checkpoint in .* can be restored.*"
                     "restart_if_unreadable=True"):
    train(_config(), str(run))
  assert _snapshot(run) == before
  config = _config()
  config.checkpoint.restart_if_unreadable = True
  with pytest.warns(UserWarning, match="cannot be restored"):
    assert train(config, str(run))["step"] == 4
  assert len(os.listdir(run / "corrupt_checkpoints")) == 2
  assert [r["step"] for r in read_metrics(str(run))] == [1, 2, 3, 4]


# 2. One trainer per workdir.

def test_second_trainer_is_refused_and_a_killed_one_leaves_no_lock(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from ssmax_jax.train.workdir import WorkdirLock;"
       " WorkdirLock(sys.argv[1]); print('locked', flush=True); time.sleep(600)", str(tmp_path)],
      cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RuntimeError, match=f"{tmp_path} is in use by another trainer .*pid and "
                       f"host: {holder.pid} "):
      train(_config(), str(tmp_path))
    assert not os.path.exists(tmp_path / "metrics.jsonl")
  finally:
    holder.kill()
    holder.wait()
  workdir_lib.WorkdirLock(str(tmp_path)).release()  # the kernel released the killed one's lock


# 3. Checkpoint integrity.

def test_array_digests_cover_bf16_int_and_rng_key_leaves():
  import jax
  import jax.numpy as jnp
  tree = {"w": jnp.ones((3, 4), jnp.bfloat16), "n": jnp.int32(3), "key": jax.random.key(0)}
  digests = array_digests(tree)
  assert {k: d.split(":")[0] for k, d in digests.items()} == {
      "['key']": "uint32", "['n']": "int32", "['w']": "bfloat16"}
  verify_digests(tree, digests, "same")
  with pytest.raises(DamagedCheckpointError, match=r"other: 1 arrays .*\['w'\]"):
    verify_digests(dict(tree, w=tree["w"].at[0, 0].set(2)), digests, "other")


def test_damaged_checkpoint_falls_back_to_the_previous_one(run):
  _damage_params(run, 4)
  with pytest.raises(DamagedCheckpointError, match="checkpoints/4: 1 arrays differ from their "
                     r"saved checksums.*evaluate another step \(\[2, 4\]\)"):
    load_model(str(run), 4)
  with pytest.warns(UserWarning, match="checkpoints/4 cannot be restored"):
    assert load_model(str(run))[1].restored_step == 2
  with pytest.warns(UserWarning, match="checkpoints/4 cannot be restored.*saved checksums.*moved"):
    result = train(_config(num_steps=5), str(run))
  assert result["step"] == 5 and np.isfinite(result["loss"])
  assert Checkpointer(str(run), read_only=True).steps() == [2, 4, 5]  # resumed at 2
  assert os.listdir(run / "corrupt_checkpoints")[0].startswith("4-")


def test_nan_right_after_a_restore_names_the_checkpoint(run, monkeypatch):
  # Same config, but an update that overflows: the NaN comes from the restored state's path.
  monkeypatch.setattr(trainer_lib, "make_optimizer", lambda o, n: make_optimizer(_huge_lr(o), n))
  with pytest.raises(NonFiniteLossError, match=r"after restoring checkpoint .*checkpoints/4 .*"
                     "corrupt_checkpoints/"):
    train(_config(num_steps=8), str(run))


def _huge_lr(opt_config):
  opt_config = opt_config.copy_and_resolve_references()
  opt_config.lr = 1e38  # parameters overflow to inf, the loss becomes NaN
  return opt_config


# 4. Metrics after a resume.

def _tensorboard_steps(workdir, tag="train/loss") -> list[int]:
  """The steps of `tag` that TensorBoard shows: a SessionLog START at step s hides the events
  of earlier files at steps >= s (tensorboardX's purge_step)."""
  from tensorboardX.proto import event_pb2
  steps = []
  for path in sorted(glob.glob(f"{workdir}/tensorboard/events.*")):
    with open(path, "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):  # TFRecords: length, its crc, the event, its crc
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 16 + length
      if event.HasField("session_log") and event.session_log.status == 1:  # START
        steps = [s for s in steps if s < event.step]
      steps += [event.step for v in event.summary.value if v.tag == tag]
  return steps


def test_torn_metrics_line_is_dropped_and_resume_logs_each_step_once(run):
  shutil.rmtree(run / "checkpoints" / "4")  # as if killed after logging step 4, before saving
  with open(run / "metrics.jsonl", "a") as f:
    f.write('{"step": 5, "lo')  # killed while writing a line
  with pytest.warns(UserWarning, match=r"metrics.jsonl: dropped its last line 5"):
    assert [r["step"] for r in read_metrics(str(run))] == [1, 2, 3, 4]
  train(_config(num_steps=6), str(run))
  assert [r["step"] for r in read_metrics(str(run))] == [1, 2, 3, 4, 5, 6]
  assert _tensorboard_steps(run) == [1, 2, 3, 4, 5, 6]


def test_bad_metrics_line_before_the_last_is_an_error_naming_the_file(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"st\n{"step": 3}\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl line 2 is not JSON"):
    read_metrics(str(tmp_path))


# 5. Bad workdirs.

@pytest.mark.parametrize("kind, message", [
    ("file", "is a file, not a directory"),
    ("under_file", "lies under .*file, which is a file"),
    ("read_only", "is not writable"),
    ("read_only_parent", "cannot be created: .* is not writable"),
])
def test_bad_workdir_is_a_one_line_error_before_any_compute(tmp_path, monkeypatch, kind, message):
  (tmp_path / "file").write_text("x")
  (tmp_path / "ro").mkdir()
  workdir = {"file": tmp_path / "file", "under_file": tmp_path / "file" / "run",
             "read_only": tmp_path / "ro", "read_only_parent": tmp_path / "ro" / "run"}[kind]
  real_access = os.access  # root writes through chmod: stand in for a read-only mount
  monkeypatch.setattr(os, "access", lambda p, m: False if str(p).endswith("ro")
                      else real_access(p, m))
  monkeypatch.setattr(trainer_lib.mesh_lib, "make_mesh", lambda *_: pytest.fail("computed"))
  with pytest.raises(ValueError, match=message) as error:
    train(_config(), str(workdir))
  assert str(workdir) in str(error.value) and "\n" not in str(error.value)
