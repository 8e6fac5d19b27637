"""Time of the embedding's backward (a scatter-add into the table) on real text against random
token ids, for the ways of writing it: why the model gathers from the float32 table.

  python -m benchmarks.bench_embedding --data=DIR --d_model=256 --batch=128   # h200_small
  python -m benchmarks.bench_embedding --data=shakespeare --batch=2           # CPU smoke test

Real text repeats a few ids thousands of times per batch (GPT-2's ' ' in Python sources: a third
of the tokens), so every write of the scatter goes to the same few rows. Prints ms per backward.
"""

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

from benchmarks.timing import mean_ms
from ssmax_jax import data as data_lib

_DATA = flags.DEFINE_string("data", "shakespeare", "A prepared GPT-2 data directory (prep_data).")
_D = flags.DEFINE_integer("d_model", 256, "Embedding width.")
_B = flags.DEFINE_integer("batch", 128, "Sequences per batch.")
_T = flags.DEFINE_integer("seq", 1024, "Sequence length.")
_VOCAB = flags.DEFINE_integer("vocab", 50304, "Table rows (GPT-2 padded to a multiple of 64).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed calls after one warm-up.")


def _custom_backward(backward):
  """Gather from the float32 table, cast to bf16; the backward is `backward(tokens, g)`."""
  @jax.custom_vjp
  def lookup(table_VD, tokens_BT):
    return table_VD[tokens_BT].astype(jnp.bfloat16)

  def fwd(table_VD, tokens_BT):
    return lookup(table_VD, tokens_BT), (tokens_BT, table_VD.shape[0])

  def bwd(res, g_BTD):
    tokens_BT, vocab = res
    return backward(tokens_BT, g_BTD, vocab), None
  lookup.defvjp(fwd, bwd)
  return lookup


def _sorted_segment_sum(tokens_BT, g_BTD, vocab):
  flat = tokens_BT.reshape(-1)
  order = jnp.argsort(flat)
  g_MD = g_BTD.reshape(flat.shape[0], -1).astype(jnp.float32)[order]
  return jax.ops.segment_sum(g_MD, flat[order], num_segments=vocab, indices_are_sorted=True)


def _one_hot_matmul(tokens_BT, g_BTD, vocab):
  onehot_MV = jax.nn.one_hot(tokens_BT.reshape(-1), vocab, dtype=jnp.bfloat16)
  return jnp.einsum("nv,nd->vd", onehot_MV, g_BTD.reshape(onehot_MV.shape[0], -1),
                    preferred_element_type=jnp.float32)


LOOKUPS = {
    "gather f32 table, cast (the model)": lambda t, x: t[x].astype(jnp.bfloat16),
    "cast table to bf16, gather": lambda t, x: t.astype(jnp.bfloat16)[x],
    "sorted segment_sum backward": _custom_backward(_sorted_segment_sum),
    "one-hot matmul backward": _custom_backward(_one_hot_matmul),
}


def main(argv):
  del argv
  B, T, D, V = _B.value, _T.value, _D.value, _VOCAB.value
  it = data_lib.make_train_iterator(_DATA.value, "gpt2", T, B, packing=False)
  real = np.asarray(next(it)["inputs"], np.int32)
  it.close()
  ids, counts = np.unique(real, return_counts=True)
  top = np.argsort(-counts)[:3]
  print(f"{jax.devices()[0].device_kind}: {B} x {T} real tokens, {len(ids)} distinct; most "
        f"frequent: " + ", ".join(f"id {ids[i]} x{counts[i]}" for i in top), flush=True)
  batches = {"random ids": np.random.default_rng(0).integers(0, min(V, 50257), (B, T)),
             "real text": real, "one id": np.zeros((B, T))}
  table_VD = jax.random.normal(jax.random.key(0), (V, D), jnp.float32)
  g_BTD = jax.random.normal(jax.random.key(1), (B, T, D), jnp.bfloat16)
  print("\n| embedding lookup | " + " | ".join(batches) + " |\n" + "|---" * (len(batches) + 1) + "|")
  for name, lookup in LOOKUPS.items():
    grad = jax.jit(lambda t, x, f=lookup: jax.vjp(lambda t: f(t, x), t)[1](g_BTD)[0])
    cells = []
    for tokens in batches.values():
      ms = mean_ms(grad, table_VD, jnp.asarray(tokens, jnp.int32), steps=_STEPS.value)
      cells.append(f"{ms:.3f} ms")
    print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
  app.run(main)
