"""The commands' own interface: --help, --print_config and one-line flag errors."""
import os
import subprocess
import sys

import pytest

from ssmax_jax.cli import program
from ssmax_jax.train import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(*args):
  return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def test_every_config_key_has_a_description():
  text = config_lib.describe(config_lib.default_config())
  assert "(no description)" not in text
  assert "model.d_ff = 2048  # F, the SwiGLU hidden width." in text.splitlines()


def test_unknown_config_key_is_one_line_with_the_suggestion():
  nested = AttributeError(KeyError(
      "'nm_steps'\nDid you mean \"num_steps\" instead of \"nm_steps\"?"))
  assert program.config_key_error(nested, ["p", "--config.train.nm_steps=3"]) == (
      "error: unknown config key 'config.train.nm_steps'; Did you mean \"num_steps\" instead "
      "of \"nm_steps\"? (--print_config lists every key)")


@pytest.mark.parametrize("args, code, expect", [
    (["--help"], 0, "--print_config"),
    (["--config=tiny", "--print_config"], 0, "train.num_steps = "),
    (["--config=tiny", "--workdir=/nonexistent/x", "--config.train.nm_steps=3"], 1,
     'Did you mean "num_steps"'),
    (["--config=tiny"], 1, "--workdir is required"),
])
def test_train_command_line(args, code, expect):
  r = _train(*args)
  assert r.returncode == code, r.stderr[-2000:]
  out = r.stdout if code == 0 else r.stderr
  assert expect in out
  if code:
    assert len(out.strip().splitlines()) == 1, out  # one line, no traceback


def test_sample_command_line():
  r = subprocess.run([sys.executable, "-m", "experiments.sample", "--workdir=/nonexistent"],
                     cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 1 and r.stderr.strip() == (
      "error: pass exactly one of --prompt=TEXT and --prompt_file=PATH.")


@pytest.mark.parametrize("command, flag, expect", [
    ("eval_needle", "--depths=abc", "--depths takes comma-separated floats in [0, 1]"),
    ("eval_loss_by_position", "--batch_size=0", "0 is not a positive integer"),
    ("eval_attention", "--memory_limit_gb=-1", "--memory_limit_gb must be > 0"),
])
def test_eval_flags_are_checked_before_loading_anything(command, flag, expect):
  r = subprocess.run([sys.executable, "-m", f"experiments.{command}", "--models=/nonexistent",
                      flag], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 1 and expect in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_an_evaluation_with_nan_results_fails():
  code = ("import sys; sys.argv = ['x', '--models=m']; from absl import flags; "
          "from ssmax_jax.cli import eval_flags as ec; flags.FLAGS(sys.argv); "
          "ec.run(lambda: {'results': [{'curves': [{'mean_loss': float('nan')}]}]})")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 1 and "the results hold NaN" in r.stderr
