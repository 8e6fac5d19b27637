"""model.remat_policy: the allowed values, the deprecated remat alias, equal gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssmax_jax.models.transformer import REMAT_POLICIES, Transformer, TransformerConfig

_TINY = dict(vocab_size=64, d_model=32, num_layers=2, num_heads=2, d_ff=64, dtype="float32")


def test_unknown_policy_names_the_key_and_values():
  with pytest.raises(ValueError, match=r"remat_policy='full'.*'none', 'block', 'dots'"):
    TransformerConfig(remat_policy="full", **_TINY)


def test_remat_alias_is_block_and_refuses_a_contradiction():
  assert TransformerConfig(remat=True, **_TINY).remat_mode == "block"
  assert TransformerConfig(**_TINY).remat_mode == "none"
  with pytest.raises(ValueError, match="remat=True.*remat_policy='dots'"):
    TransformerConfig(remat=True, remat_policy="dots", **_TINY)


def test_policies_give_the_same_gradients():
  tok_BT = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 16)), jnp.int32)
  grads = []
  for policy in REMAT_POLICIES:
    graphdef, params = nnx.split(Transformer(TransformerConfig(remat_policy=policy, **_TINY),
                                             rngs=nnx.Rngs(0)))
    grads.append(jax.grad(lambda p: nnx.merge(graphdef, p)(tok_BT).sum())(params))
  for g in grads[1:]:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads[0], g)
