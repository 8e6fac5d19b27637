"""Flax modules and the transformer: drop-ins, KV-cache decoding, parameter count."""
import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ssmax_jax
from ssmax_jax.models import Transformer, TransformerConfig, count_params, generate
from ssmax_jax.nn import SSMaxAttention, SSMaxAttentionFn, make_linen_attention_fn
from tests.reference_np import attention_np, multiplier_np

TINY = dict(vocab_size=61, d_model=32, num_layers=2, num_heads=4, d_ff=64, dtype="float32",
            l_train=16)


def test_paper_model_has_162_1m_parameters():
  model = nnx.eval_shape(lambda: Transformer(TransformerConfig(), rngs=nnx.Rngs(0)))
  assert count_params(model) == 162_148_752  # 162.1M incl. 144 SSMax s values
  assert len(jax.tree.leaves(nnx.state(model, nnx.Param))) == 12 * 10 + 3


def test_vocab_padding_keeps_logit_width():
  cfg = TransformerConfig(**{**TINY, "vocab_pad_multiple": 64})
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  assert model.embed.shape[0] == 64
  assert model(jnp.zeros((1, 3), jnp.int32)).shape == (1, 3, 61)


def test_rope_is_rotate_half_in_float64():
  from ssmax_jax.nn.layers import rope
  B, T, N, H, theta = 2, 7, 3, 8, 500.0
  x = np.random.default_rng(0).normal(size=(B, T, N, H)).astype(np.float32)
  pos = np.array([[0, 1, 2, 3, 4, 5, 6], [9, 3, 0, 7, 7, 1, 2]])
  angle = pos[:, :, None, None] * theta ** -(np.arange(0, H, 2) / H)  # [B,T,1,H/2], float64
  x1, x2 = x[..., :H // 2].astype(np.float64), x[..., H // 2:].astype(np.float64)
  want = np.concatenate([x1 * np.cos(angle) - x2 * np.sin(angle),
                         x2 * np.cos(angle) + x1 * np.sin(angle)], -1)
  got = rope(jnp.asarray(x), jnp.asarray(pos), theta)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  assert rope(jnp.asarray(x, jnp.bfloat16), jnp.asarray(pos), theta).dtype == jnp.bfloat16
  # q . k after the rotation depends on the positions only through their difference
  q_B11H, k_B11H = jnp.asarray(x[:, :1, :1]), jnp.asarray(x[:, 1:2, :1])

  def dot(pos_q, pos_k):
    at = lambda p: jnp.full((B, 1), p)
    return jnp.sum(rope(q_B11H, at(pos_q), theta) * rope(k_B11H, at(pos_k), theta), -1)

  np.testing.assert_allclose(dot(3, 1), dot(10, 8), rtol=1e-4, atol=1e-5)
  assert not np.allclose(dot(3, 1), dot(3, 2), rtol=1e-3)


def test_project_rotate_qk_matches_autodiff():
  from ssmax_jax.nn.attention import project_rotate_qk
  from ssmax_jax.nn.layers import rope
  B, T, D, N, H = 2, 5, 6, 3, 4
  with jax.enable_x64():
    rng = np.random.default_rng(7)
    x, wq, wk = (jnp.asarray(rng.normal(size=s)) for s in ((B, T, D), (D, N * H), (D, N * H)))
    pos = jnp.asarray(rng.integers(0, 50, size=(B, T)))
    cot = [jnp.asarray(rng.normal(size=(B, T, N, H))) for _ in range(2)]

    def plain(x, wq, wk, theta):
      return tuple(rope((x @ w).reshape(B, T, N, H), pos, theta) for w in (wq, wk))

    def loss(f):
      return lambda x, wq, wk, theta: sum(jnp.vdot(c, y) for c, y in zip(cot, f(x, wq, wk, theta)))

    fused = lambda x, wq, wk, theta: project_rotate_qk(x, wq, wk, pos, theta, H)
    for got, want in zip(fused(x, wq, wk, 50.0), plain(x, wq, wk, 50.0)):
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-9)
    got = jax.grad(loss(fused), argnums=(0, 1, 2))(x, wq, wk, 50.0)
    want = jax.grad(loss(plain), argnums=(0, 1, 2))(x, wq, wk, 50.0)
    for g, w in zip(got, want):
      np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-9)
    # inverse=True is the transpose: <rope(a), b> == <a, rope(b, inverse=True)> (rope's math is
    # float32)
    a, b = cot
    np.testing.assert_allclose(jnp.vdot(rope(a, pos, 50.0), b),
                               jnp.vdot(a, rope(b, pos, 50.0, inverse=True)), rtol=1e-5)


def test_config_errors():
  with pytest.raises(ValueError, match="num_heads"):
    TransformerConfig(d_model=100, num_heads=12)
  with pytest.raises(ValueError, match="variant"):
    TransformerConfig(attention="nope")


@pytest.mark.parametrize("variant", ssmax_jax.VARIANTS)
def test_decode_equals_forward(variant):
  cfg = TransformerConfig(**{**TINY, "attention": variant, "num_kv_heads": 2, "floor_scale": 4.0})
  model = Transformer(cfg, rngs=nnx.Rngs(1))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 61, (2, 12)))
  full = model(tokens)
  model.init_cache(2, 12, jnp.float32)
  steps = [model(tokens[:, :5], decode=True)]
  steps += [model(tokens[:, i:i + 1], decode=True) for i in range(5, 12)]
  np.testing.assert_allclose(jnp.concatenate(steps, 1), full, rtol=1e-4, atol=1e-4)


def test_greedy_generation_matches_argmax_of_forward():
  model = Transformer(TransformerConfig(**TINY), rngs=nnx.Rngs(2))
  prompt = jnp.asarray(np.random.default_rng(1).integers(0, 61, (2, 4)))
  out = generate(model, prompt, 5)
  assert out.shape == (2, 9)
  np.testing.assert_array_equal(out[:, :4], prompt)
  for t in range(4, 9):  # every generated token is the argmax of the full forward on its prefix
    np.testing.assert_array_equal(out[:, t], jnp.argmax(model(out[:, :t])[:, -1], -1))


def test_attention_layer_counts_n_per_document():
  """Packed documents: n restarts at each segment, so SSMax sees each document alone."""
  layer = SSMaxAttention(16, 2, variant="ssmax", l_train=8, dtype=jnp.float32, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (1, 8, 16))
  seg = jnp.array([[1, 1, 1, 2, 2, 2, 2, 2]])
  pos = jnp.array([[0, 1, 2, 0, 1, 2, 3, 4]])
  packed = layer(x, positions_BT=pos, segment_ids_BT=seg)
  alone = layer(x[:, 3:])
  np.testing.assert_allclose(packed[:, 3:], alone, rtol=1e-5, atol=1e-5)


def test_set_variant_adds_s_and_rope_theta_override():
  model = Transformer(TransformerConfig(**{**TINY, "attention": "softmax"}), rngs=nnx.Rngs(3))
  assert len(jax.tree.leaves(nnx.state(model, nnx.Param))) == 2 * 10 + 3 - 2
  tokens = jnp.arange(10)[None] % 61
  before = model(tokens)
  model.set_variant("ssmax")
  s_values = [a.logit_scale.s[...] for a in model.attention_layers()]
  np.testing.assert_allclose(s_values[0], ssmax_jax.default_s_init(16) * np.ones(4), rtol=1e-6)
  assert not np.allclose(model(tokens), before)
  assert not np.allclose(model(tokens, rope_theta=500000.0), model(tokens))


def test_nnx_multihead_attention_drop_in_learns_s():
  fn = SSMaxAttentionFn(4, "ssmax", l_train=8)
  mha = nnx.MultiHeadAttention(4, 16, qkv_features=16, attention_fn=fn, decode=False,
                               rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 6, 16))
  mask = nnx.make_causal_mask(jnp.ones((2, 6)))
  out = mha(x, mask=mask)
  assert out.shape == (2, 6, 16)
  params = nnx.state(mha, nnx.Param)
  assert params["attention_fn"]["logit_scale"]["s"][...].shape == (4,)

  def loss(m):
    return jnp.sum(m(x, mask=mask) ** 2)

  grads = nnx.grad(loss)(mha)
  assert np.abs(grads["attention_fn"]["logit_scale"]["s"][...]).sum() > 0
  # Equals the op applied to the module's own projections with n from the causal mask.
  q = mha.query(x)
  k, v = mha.key(x), mha.value(x)
  s = np.asarray(fn.logit_scale.s[...])
  n = np.arange(1, 7)[None, :, None].repeat(2, 0).repeat(4, 2)
  ref, _ = attention_np(q, k, v, multiplier_np("ssmax", n, s=s), causal=True)
  np.testing.assert_allclose(mha.out(jnp.asarray(ref, jnp.float32)), out, rtol=1e-4, atol=1e-5)


def test_linen_drop_in_learned_and_fixed():
  x = jax.random.normal(jax.random.key(2), (2, 5, 16))
  mask = linen.make_causal_mask(jnp.ones((2, 5)))
  learned = linen.MultiHeadDotProductAttention(
      num_heads=4, qkv_features=16, attention_fn=make_linen_attention_fn("ssmax", l_train=8))
  variables = learned.init(jax.random.key(0), x, mask=mask, sow_weights=True)
  s = variables["params"]["ssmax_s"]
  np.testing.assert_allclose(s, ssmax_jax.default_s_init(8) * np.ones(4), rtol=1e-6)
  g = jax.grad(lambda p: jnp.sum(learned.apply({"params": p}, x, mask=mask, sow_weights=True) ** 2))(
      variables["params"])
  assert np.abs(g["ssmax_s"]).sum() > 0

  fixed = linen.MultiHeadDotProductAttention(
      num_heads=4, qkv_features=16, attention_fn=make_linen_attention_fn("softmax"))
  plain = linen.MultiHeadDotProductAttention(num_heads=4, qkv_features=16)
  p = plain.init(jax.random.key(0), x, mask=mask)
  np.testing.assert_allclose(fixed.apply(p, x, mask=mask), plain.apply(p, x, mask=mask),
                             rtol=1e-5, atol=1e-5)
  # s is a parameter without sow_weights too, and the same one.
  unsown = learned.init(jax.random.key(0), x, mask=mask)
  np.testing.assert_allclose(unsown["params"]["ssmax_s"], s)
  np.testing.assert_allclose(learned.apply(unsown, x, mask=mask),
                             learned.apply(variables, x, mask=mask, sow_weights=True), rtol=1e-6)
