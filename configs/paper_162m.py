from ssmax_jax.configs.paper_162m import get_config  # noqa: F401
