"""python -m experiments.<name> from a checkout: shims of ssmax_jax/cli/<name>.py."""
