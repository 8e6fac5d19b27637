from ssmax_jax.configs.reproduce import PRESETS, get_config  # noqa: F401
