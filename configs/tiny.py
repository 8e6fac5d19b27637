from ssmax_jax.configs.tiny import get_config  # noqa: F401
