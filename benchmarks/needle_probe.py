"""Calibrates the recipe's needle fine-tuning budget on the softmax baseline, before any variant
is compared: pretrains softmax on the preset's corpus for --pretrain_tokens, then for each
--settings entry LR:STEPS fine-tunes it as the recipe does (configs/reproduce.py,
recipe.needle_finetune) and reads the needle grid at --multiples, RoPE θ ×1 and ×50.

  python -m benchmarks.needle_probe --preset=h200_small --pretrain_tokens=1.31e8 \
      --settings=2e-5:500,1e-4:500,3e-4:500 --workdir=/tmp/probe --data_dir=/tmp/data

The rule (docs/reproduce.md): take the cheapest budget at which the softmax baseline retrieves
the needle (mean accuracy >= 0.5) at its training length, RoPE θ×50 as in the recipe's grid, as
the paper's softmax does; only the baseline and only 1x decide, so that the choice cannot favour
a variant. Prints one table row per setting, then the choice.
"""
import copy
import dataclasses
import os

import numpy as np
from absl import app
from absl import flags
from absl import logging

from ssmax_jax.configs import reproduce as presets
from ssmax_jax.evals import runner
from ssmax_jax.reproduce import claims, corpus, plan, run

_PRESET = flags.DEFINE_string("preset", "h200_small", f"One of {', '.join(presets.PRESETS)}.")
_TOKENS = flags.DEFINE_float("pretrain_tokens", 1.31e8, "Softmax pretraining tokens.")
_SETTINGS = flags.DEFINE_list("settings", ["2e-5:500", "1e-4:500", "3e-4:500"],
                              "Fine-tuning budgets as LR:STEPS.")
_MULTIPLES = flags.DEFINE_list("multiples", ["1", "2"], "Needle context lengths, x l_train.")
_TRIALS = flags.DEFINE_integer("trials", 20, "Needles per cell (context length, depth).")
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/needle_probe", "Checkpoints and grids.")
_DATA_DIR = flags.DEFINE_string("data_dir", "workdirs/reproduce/data", "Prepared corpus cache.")


def _settings():
  out = []
  for item in _SETTINGS.value:
    try:
      lr, steps = item.split(":")
      out.append((float(lr), int(steps)))
    except ValueError:
      raise ValueError(f"--settings entry {item!r} is not LR:STEPS (e.g. 1e-4:500).") from None
    if out[-1][0] <= 0 or out[-1][1] < 1:
      raise ValueError(f"--settings entry {item!r}: LR must be > 0 and STEPS >= 1.")
  return out


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)  # orbax logs every file operation
  settings = _settings()
  config = presets.get_config(_PRESET.value)
  config.recipe.update(tokens=_TOKENS.value)
  config.recipe.needle_finetune.steps = 0
  _, rcp = plan.split_config(config)
  source, corpus_info = corpus.prepare_corpus(rcp, config.data.tokenizer, _DATA_DIR.value)
  base = plan.plan(config, "softmax", _WORKDIR.value, source)[0][0]
  plan.check_plan([base], rcp, corpus_info)
  pre = run.train_phase(base)
  print(f"softmax: {pre['steps']} steps, {pre['tokens']:,} tokens, final train loss "
        f"{pre['final_train_loss']:.4f}", flush=True)
  rows = []
  for lr, steps in settings:
    ft = copy.deepcopy(rcp.needle_finetune)
    ft.update(lr=lr, steps=steps)
    ph = plan.needle_finetune_phase(base, ft)
    ph = dataclasses.replace(ph, label=f"lr{lr:g}_steps{steps}",
                             workdir=os.path.join(_WORKDIR.value, f"needle_lr{lr:g}_steps{steps}"))
    tuned = run.train_phase(ph)
    doc = runner.run_needle([f"{ph.label}={ph.workdir}"], os.path.join(ph.workdir, "eval"),
                            multiples=tuple(map(float, _MULTIPLES.value)), trials=_TRIALS.value,
                            theta_scales=(1.0, 50.0), method="teacher_forcing",
                            show_progress=False)
    cells = {g["theta_scale"]: np.mean(g["accuracy"], axis=1) for g in doc["results"][0]["grids"]}
    rows.append((lr, steps, tuned["final_train_loss"], tuned["wall_s"], cells))
    print(f"lr {lr:g}, {steps} steps: answer loss {tuned['final_train_loss']:.3f}, accuracy "
          + "; ".join(f"θ×{t:g} " + "/".join(f"{a:.2f}" for a in acc) for t, acc in cells.items()),
          flush=True)
  ms = " | ".join(f"θ×{t:g} {m}x" for t in (1.0, 50.0) for m in _MULTIPLES.value)
  print(f"\n| lr | steps | final answer loss | s | {ms} |\n|---|---|---|---|"
        + "---|" * (2 * len(_MULTIPLES.value)))
  for lr, steps, loss, wall, cells in rows:
    print(f"| {lr:g} | {steps} | {loss:.3f} | {wall:.0f} | "
          + " | ".join(f"{a:.2f}" for t in (1.0, 50.0) for a in cells[t]) + " |")
  best = choose(rows, list(map(float, _MULTIPLES.value)))
  print(f"\nchoice: --config.recipe.needle_finetune.lr={best[0]:g} "
        f"--config.recipe.needle_finetune.steps={best[1]}" if best else
        "\nchoice: none (the softmax baseline retrieves at 1x, θ×50, with none of these budgets)")


def choose(rows, multiples):
  """(lr, steps) of the cheapest budget (fewest steps, then lowest lr) at which the baseline
  retrieves at 1x under the grid's RoPE θ×50, or None; rows: (lr, steps, loss, s, {θ scale:
  accuracy per multiple}). The other cells are shown, never used."""
  if 1.0 not in multiples:
    return None
  i = multiples.index(1.0)
  ok = sorted((steps, lr) for lr, steps, _, _, cells in rows
              if cells[50.0][i] >= claims.RETRIEVES)
  return (ok[0][1], ok[0][0]) if ok else None


if __name__ == "__main__":
  app.run(main)
