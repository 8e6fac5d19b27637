"""Models built from ssmax_jax.nn."""
from ssmax_jax.models.transformer import (Transformer, TransformerConfig, count_params,
                                          filter_logits, generate)
