"""ssmax-jax: Scalable-Softmax attention for JAX and Flax.

  ssmax_jax.dot_product_attention  the op (SSMax, softmax, or any multiplier c)
  ssmax_jax.attention_counts       n, keys attended per query, for any mask
  ssmax_jax.logit_multiplier       c for every variant name in ssmax_jax.VARIANTS
  ssmax_jax.nn                     Flax NNX modules and linen/NNX attention_fn drop-ins
  ssmax_jax.models                 the paper's transformer

The subpackages (nn, models, data, train, evals, reproduce, configs, cli) load on first use.
"""
import importlib

from ssmax_jax.ops import (IMPLEMENTATIONS, VARIANTS, attention_counts, default_s_init,
                           dot_product_attention, logit_multiplier)

__version__ = "0.2.0"

# Loaded on first attribute access (PEP 562): `import ssmax_jax` stays as light as the op.
_SUBPACKAGES = ("ops", "kernels", "nn", "models", "data", "train", "evals", "reproduce",
                "configs", "cli")


def __getattr__(name):
  if name in _SUBPACKAGES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_SUBPACKAGES))
