"""python -m experiments.eval_needle: a shim of ssmax_jax.cli.eval_needle."""
from ssmax_jax.cli.eval_needle import main

if __name__ == "__main__":
  main()
