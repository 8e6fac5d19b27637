"""Training metrics: a tqdm progress bar, metrics.jsonl (one record per logged step) and
TensorBoard (tensorboardX); without the bar (train.progress_bar=False, or stderr not a
terminal), one printed line per logged step. Only process 0 writes.

metrics.jsonl has flat keys (step, loss, tokens_per_s, tokens_seen, eval_loss, ...); TensorBoard
has them as train/<key>, eval_<key> as eval/<key> and s, b as train/s/layer<l>/head<h>, and the
run's config once, as the text 'config' (with its hyper-parameters as a table) at step 0."""
import json
import os
import sys
import warnings

import jax
import numpy as np
import tqdm

from ssmax_jax.train import config as config_lib

METRICS_FILE = "metrics.jsonl"


def tensorboard_tag(key: str) -> str:
  """metrics.jsonl key -> TensorBoard tag: eval_loss -> eval/loss, loss -> train/loss."""
  return "eval/" + key[len("eval_"):] if key.startswith("eval_") else "train/" + key


def _hparams_table(config) -> str:
  rows = [f"| {k} | {v!r} |" for k, v in sorted(config_lib._flat(config).items())]
  return "\n".join(["| key | value |", "|---|---|", *rows])


def _jsonable(value):
  if isinstance(value, (np.ndarray, np.generic)):
    return value.tolist()
  return value


class MetricsWriter:

  def __init__(self, workdir: str, total_steps: int, initial_step: int = 0,
               progress_bar: bool = True):
    self.enabled = jax.process_index() == 0
    self.tb = self.bar = self.file = None
    if not self.enabled:
      return
    from tensorboardX import SummaryWriter
    path = os.path.join(workdir, METRICS_FILE)
    if os.path.exists(path):  # a resumed run logs the steps after its checkpoint again
      kept = [r for r in read_metrics(workdir) if r["step"] <= initial_step]
      with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
    self.file = open(path, "a")
    # A resumed run logs the steps after initial_step again: TensorBoard hides the earlier
    # events from initial_step + 1 on (a SessionLog START at purge_step).
    tb_dir = os.path.join(workdir, "tensorboard")
    purge = initial_step + 1 if os.path.isdir(tb_dir) else None
    self.tb = SummaryWriter(tb_dir, purge_step=purge)
    if progress_bar and sys.stderr.isatty():  # a log file gets plain lines, not bar frames
      self.bar = tqdm.tqdm(total=total_steps, initial=initial_step, unit="step",
                           dynamic_ncols=True)

  def write(self, record: dict):
    """record: step, loss, ... and optionally s, b as [layers][heads] nested lists."""
    if not self.enabled:
      return
    record = {k: _jsonable(v) for k, v in record.items()}
    self.file.write(json.dumps(record) + "\n")
    self.file.flush()
    step = record["step"]
    for key, value in record.items():
      if key in ("s", "b"):
        for layer, heads in enumerate(value):
          for head, x in enumerate(heads):
            self.tb.add_scalar(f"train/{key}/layer{layer}/head{head}", x, step)
      elif isinstance(value, (int, float)) and key != "step":
        self.tb.add_scalar(tensorboard_tag(key), value, step)
    postfix = {"loss": f"{record['loss']:.4f}"}
    if record.get("eval_loss") is not None:
      postfix["eval"] = f"{record['eval_loss']:.4f}"
    if record.get("tokens_per_s"):
      postfix["tok/s"] = f"{record['tokens_per_s']:,.0f}"
    if record.get("mfu") is not None:
      postfix["MFU"] = f"{record['mfu']:.3f}"
    if record.get("input_wait") is not None:  # share of wall time waiting for the input pipeline
      postfix["input"] = f"{record['input_wait']:.0%}"
    if self.bar is not None:
      self.bar.n = step
      self.bar.set_postfix(postfix, refresh=False)
      self.bar.refresh()
    else:  # no bar (logs, non-interactive runs): one line per logged step
      print(f"step {step}: " + " ".join(f"{k} {v}" for k, v in postfix.items()), flush=True)

  def log_config(self, config):
    """The run's config (JSON) and its hyper-parameters (a key/value table) as TensorBoard text
    at step 0; the trainer calls it once, when a run starts at step 0."""
    if not self.enabled:
      return
    self.tb.add_text("config", "```json\n" + config_lib.to_json(config) + "\n```", 0)
    self.tb.add_text("hparams", _hparams_table(config), 0)

  def message(self, text: str):
    if not self.enabled:
      return
    if self.bar is not None:
      self.bar.write(text)
    else:
      print(text, flush=True)

  def close(self):
    if not self.enabled:
      return
    if self.bar is not None:
      self.bar.close()
    self.tb.close()
    self.file.close()


def read_metrics(workdir: str) -> list[dict]:
  """The records of workdir/metrics.jsonl. A last line that is not whole JSON (a run killed
  while writing it) is dropped with a warning; a bad line before it is a ValueError."""
  path = os.path.join(workdir, METRICS_FILE)
  with open(path) as f:
    lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
  records = []
  for n, line in lines:
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as e:
      if n != lines[-1][0]:
        raise ValueError(f"{path} line {n} is not JSON ({e}): fix or delete that line.") from None
      warnings.warn(f"{path}: dropped its last line {n}, which is not complete JSON (a run "
                    f"stopped while writing it): {line[:80]!r}", stacklevel=2)
  return records
