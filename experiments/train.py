"""python -m experiments.train: a shim of ssmax_jax.cli.train."""
from ssmax_jax.cli.train import main

if __name__ == "__main__":
  main()
