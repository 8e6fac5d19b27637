"""The reproduction's variants and the files a call writes: one place for each name.

Five variants are trained by a call of their own (RUNNABLE); the other three come with the
softmax call (PRODUCED_BY): (e) continues the softmax model, qwen_logn and llama4_temperature
read it at inference.
"""

# The eight variants of the paper, in its order, with what each is (the page's row names).
PAPER_VARIANTS = {
    "softmax": "(a) softmax",
    "ssmax": "(b) SSMax, learned s",
    "ssmax_fixed": "(c) SSMax, s fixed",
    "ssmax_bias": "(d) SSMax + learned bias",
    "softmax_then_ssmax": "(e) softmax, switched to SSMax after pretraining",
    "ssmax_final10": "(f) switched to SSMax for the final 10% of pretraining",
    "qwen_logn": "Qwen log-n at inference, on (a)",
    "llama4_temperature": "Llama 4 temperature at inference, on (a)",
}
# Variants a call trains (experiments.reproduce --variant=...).
RUNNABLE = ("softmax", "ssmax", "ssmax_fixed", "ssmax_bias", "ssmax_final10")
# The variants a call of another variant produces: variant -> that call's --variant.
PRODUCED_BY = {"softmax_then_ssmax": "softmax", "qwen_logn": "softmax",
               "llama4_temperature": "softmax"}

FORMAT = "ssmax_jax.reproduce.v1"  # summary.json's `format`
SUMMARY_FILE = "summary.json"
OUTPUT_FILES = (SUMMARY_FILE, "loss_by_position.json", "loss_by_position.png", "needle.json",
                "needle.png", "attention.json", "attention.png", "learned_s.json")
NEEDLE_SUFFIX = "_needle"  # label and workdir suffix of a model's needle fine-tuning phase

# The target scale: a variant below it counts as not run in the claims.
MIN_TOKENS = 5e8  # training tokens ...
MIN_SEQ_LEN = 512  # ... at this sequence length or longer


def check_runnable(variant: str) -> str:
  """`variant` if a call trains it; a ValueError naming the call to make otherwise."""
  if variant in RUNNABLE:
    return variant
  if variant in PRODUCED_BY:
    raise ValueError(f"--variant={variant!r} is produced by the call of "
                     f"--variant={PRODUCED_BY[variant]!r} (same run, same corpus); run that one.")
  raise ValueError(f"--variant={variant!r} is unknown; choose one of {', '.join(RUNNABLE)} "
                   f"({', '.join(PRODUCED_BY)} come with softmax).")


def command_for(variant: str, preset: str = "h200_small") -> str:
  """The command line that produces `variant` into docs/results/PRESET/CALL."""
  call = PRODUCED_BY.get(variant, variant)
  return (f"python -m experiments.reproduce --preset={preset} --variant={call} "
          f"--out=docs/results/{preset}/{call}")
