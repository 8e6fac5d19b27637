"""Flax modules: SSMaxAttention, the attention_fn drop-ins, layers and logical axis names."""
from ssmax_jax.nn.attention import (LogitScale, SSMaxAttention, SSMaxAttentionFn,
                                    make_linen_attention_fn)
from ssmax_jax.nn.layers import Dense, RMSNorm, rope
from ssmax_jax.nn.partitioning import RULES, logical_to_spec, shard
