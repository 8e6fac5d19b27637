"""python -m experiments.report: a shim of ssmax_jax.cli.report."""
from ssmax_jax.cli.report import main

if __name__ == "__main__":
  main()
