"""A run's workdir: its path checks, the one-trainer lock, and the config of every start.

  config.json                  the config of the latest start (what `read_config` returns)
  configs/config_step<N>.json  the config of the start at step N (kept: checkpoint k was trained
                               by the start with the largest N < k)
  train.lock                   held (flock) by the running trainer; holds its pid and host
"""
import fcntl
import os
import re
import socket

from ssmax_jax.train import config as config_lib

CONFIG_FILE = "config.json"
CONFIGS_DIR = "configs"
LOCK_FILE = "train.lock"
_START_CONFIG = re.compile(r"config_step(\d+)\.json$")


def check_path(workdir: str):
  """A one-line ValueError if `workdir` cannot hold a run (creates nothing)."""
  path = os.path.abspath(workdir)
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if existing != path and not os.path.isdir(existing):
    raise ValueError(f"--workdir {workdir} lies under {existing}, which is a file: choose a "
                     "path under a directory.")
  if not os.path.isdir(existing):
    raise ValueError(f"--workdir {workdir} is a file, not a directory: pass a directory (a new "
                     "path, or the workdir of the run to resume).")
  if not os.access(existing, os.W_OK | os.X_OK):
    what = "is" if existing == path else f"cannot be created: {existing} is"
    raise ValueError(f"--workdir {workdir} {what} not writable (read-only filesystem or "
                     "permissions): fix the permissions or choose a writable --workdir.")


class WorkdirLock:
  """An exclusive flock on workdir/train.lock: one trainer per workdir. The kernel releases it
  when the process dies, so a crashed run leaves nothing to clean up."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(self.fd, 200, 0).decode(errors="replace").strip() or "unknown"
      os.close(self.fd)
      raise RuntimeError(f"{os.path.abspath(workdir)} is in use by another trainer (pid and "
                         f"host: {holder}; lock {self.path}): wait for it to finish, stop it, "
                         "or train in another --workdir.") from None
    os.ftruncate(self.fd, 0)
    os.pwrite(self.fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)

  def release(self):
    fcntl.flock(self.fd, fcntl.LOCK_UN)
    os.close(self.fd)


def _write_atomic(path: str, text: str):
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)  # a crash leaves the old file or the new one, never half of one


def save_start_config(workdir: str, config, step: int):
  """Saves the config of a start at `step`: configs/config_step<step>.json and config.json."""
  text = config_lib.to_json(config)
  os.makedirs(os.path.join(workdir, CONFIGS_DIR), exist_ok=True)
  _write_atomic(os.path.join(workdir, CONFIGS_DIR, f"config_step{step}.json"), text)
  _write_atomic(os.path.join(workdir, CONFIG_FILE), text)


def config_path(workdir: str, step: int | None = None) -> str:
  """The config that trained checkpoint `step`: that of the last start before it (config.json
  for step None, or a workdir of an older version without configs/)."""
  starts = []
  if step is not None and os.path.isdir(os.path.join(workdir, CONFIGS_DIR)):
    starts = [int(m.group(1)) for name in os.listdir(os.path.join(workdir, CONFIGS_DIR))
              if (m := _START_CONFIG.match(name)) and int(m.group(1)) < step]
  if starts:
    return os.path.join(workdir, CONFIGS_DIR, f"config_step{max(starts)}.json")
  return os.path.join(workdir, CONFIG_FILE)


def read_config(workdir: str, step: int | None = None):
  """The saved config of the run (step None) or of the start that trained checkpoint `step`."""
  path = config_path(workdir, step)
  if not os.path.isfile(path):
    raise ValueError(f"{path} does not exist: {workdir} is not a training workdir.")
  with open(path) as f:
    return config_lib.from_json(f.read(), source=path)


def checkpoint_steps(workdir: str) -> list[int]:
  """Steps of the finished checkpoints in workdir/checkpoints, read without orbax (which would
  create the directory)."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def check_resume(workdir: str, config):
  """Raises a ValueError naming every key that differs from the config of the workdir's
  checkpoints and may not change on resume (config.RESUMABLE_KEYS); touches nothing."""
  steps = checkpoint_steps(workdir)
  if not steps:
    return
  path = config_path(workdir, steps[-1])
  if not os.path.isfile(path):
    raise ValueError(f"{workdir} has checkpoints {steps} but no {CONFIG_FILE} to check this "
                     "config against: put the run's config back, or train in a new --workdir.")
  changes = config_lib.resume_changes(read_config(workdir, steps[-1]), config)
  if changes:
    listed = "; ".join(f"{key}: {old!r} in the checkpoints, {new!r} now"
                       for key, old, new in changes)
    raise ValueError(f"this config does not match the checkpoints of {workdir} (from {path}): "
                     f"{listed}. To resume, set these keys back; for a new run with them, use a "
                     "new --workdir (config.init.workdir starts from these parameters).")
