"""python -m experiments.sample: a shim of ssmax_jax.cli.sample."""
from ssmax_jax.cli.sample import main

if __name__ == "__main__":
  main()
