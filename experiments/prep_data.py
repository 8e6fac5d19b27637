"""python -m experiments.prep_data: a shim of ssmax_jax.cli.prep_data."""
from ssmax_jax.cli.prep_data import main

if __name__ == "__main__":
  main()
