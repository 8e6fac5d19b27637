"""Continues text prompts from a training run's checkpoint, and prints each continuation.

  python -m experiments.sample --workdir=workdirs/tiny --prompt="ROMEO:" --top_p=0.9 \
      --temperature=0.8 --max_new_tokens=200
  ssmax-sample --workdir=workdirs/tiny --prompt_file=prompts.txt   (one prompt per line)

Any checkpoint of any variant (--step, --variant to switch the attention after loading).
"""
import sys

from absl import flags
from absl import logging

from ssmax_jax.cli import program
from ssmax_jax.evals import sample as sample_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's --workdir.")
_PROMPT = flags.DEFINE_string("prompt", None, "One prompt ('' starts a new document).")
_PROMPT_FILE = flags.DEFINE_string("prompt_file", None, "A file of prompts, one per line.")
_STEP = flags.DEFINE_integer("step", None, "The checkpoint step (default: the latest).")
_VARIANT = flags.DEFINE_string("variant", None, "Switch the attention variant after loading.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 200, "Most tokens generated per prompt.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 is greedy decoding.")
_TOP_K = flags.DEFINE_integer("top_k", None, "Sample from the k most likely tokens.")
_TOP_P = flags.DEFINE_float("top_p", None, "Nucleus sampling threshold in (0, 1].")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")


def _prompts() -> list[str]:
  if (_PROMPT.value is None) == (_PROMPT_FILE.value is None):
    sys.exit("error: pass exactly one of --prompt=TEXT and --prompt_file=PATH.")
  if _PROMPT.value is not None:
    return [_PROMPT.value]
  try:
    with open(_PROMPT_FILE.value, encoding="utf-8") as f:
      return f.read().splitlines()
  except OSError as e:
    sys.exit(f"error: --prompt_file={_PROMPT_FILE.value}: {e.strerror}.")


def _main(argv):
  del argv
  if not _WORKDIR.value:
    sys.exit("error: --workdir is required: the training run to sample from.")
  prompts = _prompts()
  logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
  try:
    texts = sample_lib.sample_from_checkpoint(
        _WORKDIR.value, prompts, _MAX_NEW.value, step=_STEP.value, variant=_VARIANT.value,
        temperature=_TEMPERATURE.value, top_k=_TOP_K.value, top_p=_TOP_P.value,
        seed=_SEED.value)
  except ValueError as e:
    sys.exit(f"error: {e}")
  for prompt, text in zip(prompts, texts):
    print(f"{prompt}{text}\n{'-' * 40}")


def main():
  program.run(_main, __doc__, __name__)


if __name__ == "__main__":
  main()
