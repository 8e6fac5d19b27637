from ssmax_jax.configs.test_tiny import get_config  # noqa: F401
