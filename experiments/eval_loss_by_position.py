"""python -m experiments.eval_loss_by_position: a shim of ssmax_jax.cli.eval_loss_by_position."""
from ssmax_jax.cli.eval_loss_by_position import main

if __name__ == "__main__":
  main()
