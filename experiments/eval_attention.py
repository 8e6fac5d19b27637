"""python -m experiments.eval_attention: a shim of ssmax_jax.cli.eval_attention."""
from ssmax_jax.cli.eval_attention import main

if __name__ == "__main__":
  main()
