from ssmax_jax.configs.needle_finetune import get_config  # noqa: F401
