"""python -m experiments.eval_learned_s: a shim of ssmax_jax.cli.eval_learned_s."""
from ssmax_jax.cli.eval_learned_s import main

if __name__ == "__main__":
  main()
