"""python -m experiments.reproduce: a shim of ssmax_jax.cli.reproduce."""
from ssmax_jax.cli.reproduce import main

if __name__ == "__main__":
  main()
