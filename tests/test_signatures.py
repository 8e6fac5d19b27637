"""The public classes' signatures name their real arguments.

nnx.Module's metaclass `__call__(*args, **kwargs)` would otherwise be what inspect.signature,
help() and IDEs show for every module (ssmax_jax/nn/_signature.py).
"""
import inspect
import pydoc

import pytest
from flax import nnx

from ssmax_jax.models import Transformer, TransformerConfig
from ssmax_jax.nn import Dense, LogitScale, RMSNorm, SSMaxAttention, SSMaxAttentionFn
from ssmax_jax.nn._signature import init_signature

CLASSES = {
    SSMaxAttention: ("d_model", "num_heads", "num_kv_heads", "variant", "rngs"),
    SSMaxAttentionFn: ("num_heads", "variant", "l_train", "implementation"),
    LogitScale: ("num_heads", "variant", "s_init", "b_init"),
    Dense: ("d_in", "d_out", "names", "dtype", "param_dtype", "rngs", "init"),
    RMSNorm: ("dim", "eps", "dtype", "param_dtype", "rngs", "implementation"),
    Transformer: ("config", "rngs"),
    TransformerConfig: ("vocab_size", "d_model", "attention", "norm_implementation"),
}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_signature_names_the_constructor_arguments(cls):
  params = inspect.signature(cls).parameters
  assert "self" not in params and "args" not in params and "kwargs" not in params
  assert set(CLASSES[cls]) <= set(params)
  if issubclass(cls, nnx.Module):  # exactly __init__'s arguments, in order
    assert list(params) == list(inspect.signature(cls.__init__).parameters)[1:]


def test_help_shows_the_arguments():
  text = pydoc.render_doc(SSMaxAttention, renderer=pydoc.plaintext)
  assert "SSMaxAttention(\n" in text or "SSMaxAttention(d_model" in text
  assert "*args" not in text.split("Method resolution order")[0]


def test_an_instance_keeps_its_call_signature():
  layer = Dense(3, 4, ("embed", "mlp"), dtype="float32", param_dtype="float32",
                rngs=nnx.Rngs(0))
  assert list(inspect.signature(layer).parameters) == ["x"]


def test_a_subclass_shows_its_own_arguments():
  @init_signature
  class Base(nnx.Module):
    def __init__(self, width, *, rngs):
      self.width = width

  class Child(Base):
    def __init__(self, depth, scale=2.0):
      super().__init__(depth, rngs=None)

  assert list(inspect.signature(Base).parameters) == ["width", "rngs"]
  assert list(inspect.signature(Child).parameters) == ["depth", "scale"]
