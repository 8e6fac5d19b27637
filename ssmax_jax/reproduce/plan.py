"""The plan of one call: its training phases, the models each evaluation reads, and every check
that can refuse it before any compute."""
import copy
import dataclasses
import math
import os

from ssmax_jax.evals import common, needle
from ssmax_jax.reproduce.variants import NEEDLE_SUFFIX, check_runnable


@dataclasses.dataclass
class Phase:
  """One training run: its label (the variant it produces), config and workdir."""
  label: str
  config: object
  workdir: str
  init_from: str | None = None  # label of the phase whose checkpoint it starts from


def split_config(config):
  """(training config without `recipe`, recipe) from a reproduce config."""
  if "recipe" not in config:
    raise ValueError("the config has no `recipe` group: pass --preset=NAME (configs/reproduce.py).")
  train_config = copy.deepcopy(config)
  train_config.unlock()
  recipe = train_config.recipe
  del train_config["recipe"]
  return train_config, recipe


def steps_for(tokens: float, batch_size: int, seq_len: int) -> int:
  return max(1, math.ceil(float(tokens) / (batch_size * seq_len)))


def needle_finetune_phase(parent: Phase, ft) -> Phase:
  """The paper's needle fine-tuning (Table 3) of a trained phase's model: a fresh AdamW
  (0.9, 0.999) without weight decay, clip 1.0, cosine from ft.lr to 0, loss on answers only."""
  c = copy.deepcopy(parent.config)
  if c.switch.step >= 0:  # (f): the model ends with the switched-to variant
    c.model.attention = c.switch.attention
    c.switch.step = -1
  c.init.workdir = parent.workdir
  c.data.update(kind="needle", needle_min_context=ft.min_context)
  c.train.update(num_steps=ft.steps, batch_size=ft.batch_size, seq_len=ft.seq_len or
                 c.train.seq_len, grad_accum_steps=1, max_minutes=0.0, profile_at_step=-1)
  c.optimizer.update(lr=ft.lr, b1=0.9, b2=0.999, weight_decay=0.0, clip_norm=1.0,
                     schedule="cosine", warmup_steps=0, final_lr_ratio=0.0)
  return Phase(f"{parent.label}{NEEDLE_SUFFIX}", c, f"{parent.workdir}{NEEDLE_SUFFIX}",
               init_from=parent.label)


def plan(config, variant: str, workdir: str, data_source: str):
  """(phases, models, retrieval_models): the training phases of `variant` and the models
  evaluated, as [(label, spec)] with spec `LABEL=WORKDIR[:VARIANT]` (docs/evaluations.md):
  `models` (pretrained) for the loss by position and learned s, `retrieval_models` (the same
  labels after needle fine-tuning, or the pretrained ones without it) for the needle grid and
  the attention to the needle. Pure."""
  check_runnable(variant)
  base, recipe = split_config(config)
  base.data.source = data_source
  t = base.train
  num_steps = steps_for(recipe.tokens, t.batch_size, t.seq_len)
  base.train.num_steps = num_steps
  main = copy.deepcopy(base)
  main.model.attention = "ssmax" if variant == "ssmax_final10" else variant
  main.train.max_minutes = float(recipe.train_minutes)
  phases = [Phase(variant, main, os.path.join(workdir, variant))]
  if variant == "ssmax_final10":
    if not 0.0 < recipe.switch_fraction < 1.0:
      raise ValueError(f"config.recipe.switch_fraction={recipe.switch_fraction} must be in (0, 1).")
    main.model.attention = "softmax"
    switch_step = round(num_steps * (1 - recipe.switch_fraction))
    main.switch.update(step=min(num_steps - 1, max(1, switch_step)), attention="ssmax")
    if num_steps < 2:
      raise ValueError(f"ssmax_final10 needs at least 2 steps; config.recipe.tokens="
                       f"{recipe.tokens:g} gives {num_steps}: raise it.")
  # (label, the phase whose model it is, inference variant or "")
  rows = [(variant, variant, "")]
  if variant == "softmax":
    if recipe.continue_fraction <= 0:
      raise ValueError(f"config.recipe.continue_fraction={recipe.continue_fraction} must be > 0 "
                       "(variant (e) continues the softmax model with SSMax).")
    cont = copy.deepcopy(base)
    steps = steps_for(recipe.continue_fraction * recipe.tokens, t.batch_size, t.seq_len)
    cont.model.attention = "ssmax"
    cont.init.workdir = phases[0].workdir
    cont.train.num_steps = steps
    cont.optimizer.warmup_steps = max(1, steps // 10)
    cont.data.seed = base.data.seed + 1
    phases.append(Phase("softmax_then_ssmax", cont, os.path.join(workdir, "softmax_then_ssmax"),
                        init_from="softmax"))
    rows += [("softmax_then_ssmax", "softmax_then_ssmax", ""),
             ("qwen_logn", "softmax", ":qwen_logn"),
             ("llama4_temperature", "softmax", ":llama4_temperature")]
  ft = recipe.needle_finetune
  if ft.steps < 0:
    raise ValueError(f"config.recipe.needle_finetune.steps={ft.steps} must be >= 0 (0: none).")
  pretrained = {ph.label: ph.workdir for ph in phases}
  tuned = [needle_finetune_phase(ph, ft) for ph in phases] if ft.steps else []
  retrieval_dirs = {ph.init_from: ph.workdir for ph in tuned} or pretrained
  models = [(label, f"{label}={pretrained[src]}{inference}") for label, src, inference in rows]
  retrieval = [(label, f"{label}={retrieval_dirs[src]}{inference}")
               for label, src, inference in rows]
  return phases + tuned, models, retrieval


def checkpoint_steps(workdir: str) -> list[int]:
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


# Keys that make a checkpoint another run (a finished or resumed run must agree on them).
_SAME_RUN = ("model.vocab_size", "model.d_model", "model.num_layers", "model.num_heads",
             "model.num_kv_heads", "model.d_ff", "model.vocab_pad_multiple", "model.attention",
             "model.rope_theta", "model.s_init", "model.fixed_s", "data.tokenizer",
             "train.batch_size", "train.seq_len", "train.num_steps", "switch.step",
             "switch.attention")


def _check_same_run(ph: Phase):
  from ssmax_jax.train import read_config
  saved = read_config(ph.workdir)
  for name in _SAME_RUN:
    group, k = name.split(".")
    if saved[group][k] != ph.config[group][k]:
      raise ValueError(f"workdir {ph.workdir} holds a run with config.{name}="
                       f"{saved[group][k]!r}, this plan has {ph.config[group][k]!r}: pass a new "
                       "--workdir (or the same overrides as that run).")


def check_plan(phases, recipe, corpus: dict):
  """Everything that can be refused before training: configs, resumable workdirs, evaluation
  lengths against the tokenizer and the validation data."""
  from ssmax_jax import data
  from ssmax_jax.train import validate
  for ph in phases:
    try:
      validate(ph.config)
    except ValueError as e:
      raise ValueError(f"{ph.label}: {e}") from None
    steps = checkpoint_steps(ph.workdir)
    if steps and steps[-1] > ph.config.train.num_steps:
      raise ValueError(f"workdir {ph.workdir} holds a checkpoint at step {steps[-1]}, beyond this "
                       f"plan's {ph.config.train.num_steps} steps: pass a new --workdir.")
    if steps:
      _check_same_run(ph)
  c, e = phases[0].config, recipe.eval
  l_train = c.model.l_train or c.train.seq_len
  tokenizer = data.get_tokenizer(c.data.tokenizer)
  shortest = needle.min_context_length(tokenizer)
  lengths = common.context_lengths(l_train, e.needle_multiples)
  if min(lengths) < shortest:
    raise ValueError(f"config.recipe.eval.needle_multiples {tuple(e.needle_multiples)} x l_train "
                     f"{l_train} give {min(lengths)} tokens, shorter than a needle prompt with "
                     f"tokenizer {tokenizer.name!r} ({shortest}): use larger multiples.")
  if e.attention_multiple * l_train < shortest:
    raise ValueError(f"config.recipe.eval.attention_multiple={e.attention_multiple} x l_train is "
                     f"shorter than a needle prompt ({shortest} tokens).")
  longest = max(common.context_lengths(l_train, e.multiples) + lengths
                + [int(round(e.attention_multiple * l_train))]) + 16
  if corpus["validation_tokens"] < longest:
    raise ValueError(f"the validation split has {corpus['validation_tokens']} tokens, fewer than "
                     f"the longest evaluation context ({longest}): raise "
                     "config.recipe.val_fraction or lower the multiples.")
