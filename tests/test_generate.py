"""Decoding: ragged prompt batches, top-k / top-p sampling, eos stops, argument checks, and
text from a trained checkpoint (CPU, float32, tiny models)."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssmax_jax.data import get_tokenizer
from ssmax_jax.evals import sample
from ssmax_jax.models import Transformer, TransformerConfig, filter_logits, generate
from ssmax_jax.models import transformer as transformer_lib

TINY = dict(vocab_size=61, d_model=32, num_layers=2, num_heads=4, d_ff=64, dtype="float32",
            l_train=16, implementation="xla")
LENGTHS = np.array([3, 7, 5])


def _model(attention="ssmax", seed=0):
  return Transformer(TransformerConfig(**{**TINY, "attention": attention}), rngs=nnx.Rngs(seed))


def _ragged_prompts(seed=0):
  """[3,7] random ids, right-padded with random ids too (they must not be attended)."""
  return np.random.default_rng(seed).integers(0, 61, (3, 7))


@pytest.mark.parametrize("attention", ["ssmax", "qwen_logn"])
def test_a_row_of_a_ragged_batch_decodes_as_it_would_alone(attention):
  model, prompts_BT = _model(attention), _ragged_prompts()
  out = generate(model, prompts_BT, 6, prompt_lengths=LENGTHS)
  assert out.shape == (3, 13)
  np.testing.assert_array_equal(out[:, :7], prompts_BT)
  for b, n in enumerate(LENGTHS):
    alone = generate(model, prompts_BT[b:b + 1, :n], 6)
    np.testing.assert_array_equal(out[b, 7:], alone[0, n:])


def test_ragged_greedy_tokens_are_the_argmax_of_the_forward():
  model, prompts_BT = _model(), _ragged_prompts(1)
  out = np.asarray(generate(model, prompts_BT, 4, prompt_lengths=LENGTHS))
  for b, n in enumerate(LENGTHS):
    seq = np.concatenate([prompts_BT[b, :n], out[b, 7:]])
    want = jnp.argmax(model(jnp.asarray(seq[None, :-1]))[0, n - 1:], -1)
    np.testing.assert_array_equal(seq[n:], want)


def test_top_k_1_and_a_tiny_top_p_equal_greedy():
  model, prompts_BT = _model(), _ragged_prompts(2)
  greedy = generate(model, prompts_BT, 5, prompt_lengths=LENGTHS)
  for kw in (dict(top_k=1), dict(top_p=1e-6), dict(top_k=4, top_p=1e-6)):
    got = generate(model, prompts_BT, 5, prompt_lengths=LENGTHS, temperature=1.5, seed=3, **kw)
    np.testing.assert_array_equal(got, greedy, err_msg=str(kw))


def test_sampling_is_reproducible_by_seed():
  model, prompts_BT = _model(), _ragged_prompts(3)
  kw = dict(prompt_lengths=LENGTHS, temperature=1.0, top_k=20, top_p=0.9)
  a, b = (generate(model, prompts_BT, 8, seed=7, **kw) for _ in range(2))
  np.testing.assert_array_equal(a, b)
  assert (generate(model, prompts_BT, 8, seed=8, **kw) != a).any()


def test_eos_stops_each_row_on_its_own():
  model, prompts_BT = _model(), _ragged_prompts(4)
  free = np.asarray(generate(model, prompts_BT, 8, prompt_lengths=LENGTHS))[:, 7:]
  eos = int(free[0, 2])  # row 0 stops by its third token; the others when (if) they emit it
  out, new_lengths = generate(model, prompts_BT, 8, prompt_lengths=LENGTHS, eos_id=eos,
                              return_lengths=True)
  out = np.asarray(out)
  for b in range(3):
    hits = np.flatnonzero(free[b] == eos)
    n = hits[0] + 1 if hits.size else 8
    assert new_lengths[b] == n
    np.testing.assert_array_equal(out[b, 7:7 + n], free[b, :n])
    assert (out[b, 7 + n:] == eos).all()
  assert new_lengths[0] <= 3 and len(set(np.asarray(new_lengths).tolist())) > 1


def test_without_eos_every_row_generates_max_new_tokens():
  _, new_lengths = generate(_model(), _ragged_prompts(), 3, prompt_lengths=LENGTHS,
                            return_lengths=True)
  np.testing.assert_array_equal(new_lengths, [3, 3, 3])


def test_filter_logits_keeps_the_top_k_then_the_nucleus():
  logits_BV = jnp.log(jnp.array([[0.5, 0.05, 0.2, 0.15, 0.1], [0.1, 0.2, 0.3, 0.15, 0.25]]))
  kept = lambda **kw: np.isfinite(filter_logits(logits_BV, **kw))
  np.testing.assert_array_equal(kept(top_k=2), [[1, 0, 1, 0, 0], [0, 0, 1, 0, 1]])
  # Row 0 reaches 0.6 with {0.5, 0.2}; row 1 needs {0.3, 0.25, 0.2}.
  np.testing.assert_array_equal(kept(top_p=0.6), [[1, 0, 1, 0, 0], [0, 1, 1, 0, 1]])
  # After top_k=2 the kept pair renormalises: row 1 {0.3, 0.25} -> 0.55, 0.45, and 0.5 needs one.
  np.testing.assert_array_equal(kept(top_k=2, top_p=0.5), [[1, 0, 0, 0, 0], [0, 0, 1, 0, 0]])
  got = filter_logits(logits_BV, top_k=3)
  np.testing.assert_array_equal(np.where(kept(top_k=3), got, 0), np.where(kept(top_k=3),
                                                                          logits_BV, 0))


def test_sampled_tokens_stay_within_the_top_k():
  model = _model()
  prompts_BT = np.tile(_ragged_prompts()[:1], (256, 1))  # 256 draws of one first token
  logits_V = model(jnp.asarray(prompts_BT[:1]))[0, -1]
  top3 = set(np.argsort(-np.asarray(logits_V))[:3].tolist())
  draws = np.asarray(generate(model, prompts_BT, 1, temperature=5.0, top_k=3))[:, -1]
  assert set(draws.tolist()) == top3  # never outside; a hot temperature reaches all three


def test_new_options_do_not_recompile():
  model, prompts_BT = _model(), _ragged_prompts()
  kw = dict(top_k=5, top_p=0.9, eos_id=3)
  generate(model, prompts_BT, 3, temperature=1.0, seed=0, **kw)
  before = transformer_lib._decode._cache_size()
  generate(model, prompts_BT, 3, prompt_lengths=LENGTHS, temperature=0.5, seed=1,
           **{**kw, "top_p": 0.5, "eos_id": 4})
  assert transformer_lib._decode._cache_size() == before


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_new_tokens=0), "max_new_tokens=0 must be >= 1"),
    (dict(temperature=-1.0), "temperature=-1.0 must be >= 0"),
    (dict(top_k=5), "top_k=5 only applies when sampling"),
    (dict(top_p=0.9), "top_p=0.9 only applies when sampling"),
    (dict(temperature=1.0, top_k=0), r"top_k=0 must be in 1..vocab_size=61"),
    (dict(temperature=1.0, top_k=62), r"top_k=62 must be in 1..vocab_size=61"),
    (dict(temperature=1.0, top_p=0.0), r"top_p=0.0 must be in \(0, 1\]"),
    (dict(temperature=1.0, top_p=1.5), r"top_p=1.5 must be in \(0, 1\]"),
    (dict(eos_id=61), r"eos_id=61 is not a token id: pass one in 0..60"),
    (dict(prompt_lengths=[3, 7]), r"prompt_lengths has shape \(2,\).*expected \[B\]=\[3\]"),
    (dict(prompt_lengths=[3.0, 7.0, 5.0]), "prompt_lengths has shape"),
    (dict(prompt_lengths=[0, 7, 5]), r"prompt_lengths=\[0, 7, 5\] must be in 1..T=7"),
    (dict(prompt_lengths=[3, 8, 5]), r"must be in 1..T=7"),
    (dict(prompts_BT=np.zeros(7, int)), r"prompts_BT has shape \(7,\)"),
    (dict(prompts_BT=np.full((3, 7), 61)), "prompts_BT holds ids outside 0..60"),
])
def test_bad_arguments_raise_before_decoding(kwargs, match):
  args = dict(prompts_BT=_ragged_prompts(), max_new_tokens=3)
  args.update(kwargs)
  model = _model()
  with pytest.raises(ValueError, match=match):
    generate(model, args.pop("prompts_BT"), args.pop("max_new_tokens"), **args)
  assert all(a.cache_k is None for a in model.attention_layers())  # no cache left behind


def test_padding_ids_past_a_prompt_length_are_not_checked():
  prompts_BT = _ragged_prompts()
  prompts_BT[0, 3:] = -1
  generate(_model(), prompts_BT, 1, prompt_lengths=LENGTHS)


# --- Text from a trained checkpoint -------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  from configs import test_tiny
  from ssmax_jax.train import train
  workdir = str(tmp_path_factory.mktemp("sample") / "run")
  c = test_tiny.get_config()  # byte-level (eot 256), Shakespeare
  c.train.num_steps, c.checkpoint.every_steps = 3, 3
  train(c, workdir)
  return workdir


def test_sample_from_checkpoint_continues_each_prompt(run_dir):
  from ssmax_jax.train import load_model
  prompts = ["ROMEO:", "", "To be, or not"]
  texts = sample.sample_from_checkpoint(run_dir, prompts, 6, stop_at_eot=False)
  assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
  # The same as decoding each prompt alone with generate.
  model, _ = load_model(run_dir, overrides={"implementation": "xla"})
  byte = get_tokenizer("byte")
  for prompt, text in zip(prompts, texts):
    ids = byte.encode(prompt) if prompt else np.array([byte.eot_id])
    alone = generate(model, ids[None], 6)[0, len(ids):]
    assert text == byte.decode(alone)
  again = sample.sample_from_checkpoint(run_dir, prompts, 6, step=3, temperature=1.0,
                                        top_k=10, seed=1)
  assert again == sample.sample_from_checkpoint(run_dir, prompts, 6, temperature=1.0,
                                                top_k=10, seed=1)


def test_sample_drops_the_eot_it_stops_at():
  byte = get_tokenizer("byte")
  model = Transformer(TransformerConfig(**{**TINY, "vocab_size": 257}), rngs=nnx.Rngs(0))
  prompt = byte.encode("ab")
  free = np.asarray(generate(model, prompt[None], 5))[0, 2:]
  assert free[0] != byte.eot_id
  # Make eot the greedy second token and leave the first alone: its lm_head column becomes
  # the second position's hidden state less its part along the first's.
  h_2D = model.hidden(jnp.asarray(np.concatenate([prompt, free[:1]])[None]))[0, -2:]
  w_D = h_2D[1] - (h_2D[1] @ h_2D[0]) / (h_2D[0] @ h_2D[0]) * h_2D[0]
  model.lm_head.kernel[...] = model.lm_head.kernel[...].at[:, byte.eot_id].set(1e3 * w_D)
  assert sample.sample(model, byte, ["ab"], 5) == [byte.decode(free[:1])]
  assert sample.sample(model, byte, ["ab"], 2, stop_at_eot=False) == [
      byte.decode(np.append(free[:1], byte.eot_id))]


def test_sample_checks_prompts_before_loading(tmp_path):
  with pytest.raises(ValueError, match="prompts must be a list of str"):
    sample.sample_from_checkpoint(str(tmp_path), "ROMEO:", 4)
  with pytest.raises(ValueError, match="prompts is empty"):
    sample.sample_from_checkpoint(str(tmp_path), [], 4)
  with pytest.raises(ValueError, match="does not exist"):
    sample.sample_from_checkpoint(str(tmp_path / "nope"), ["a"], 4)
