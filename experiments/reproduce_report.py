"""python -m experiments.reproduce_report: a shim of ssmax_jax.cli.reproduce_report."""
from ssmax_jax.cli.reproduce_report import main

if __name__ == "__main__":
  main()
