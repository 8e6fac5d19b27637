"""Long-range retrieval examples: the needle in a haystack (paper section 3.3) and synthetic
key-value retrieval. Both return token sequences with a loss mask that is 1 on answer tokens only.

To train or score on an example of length L: inputs = tokens[:-1], targets = tokens[1:],
target mask = loss_mask[1:] (pipeline.examples_to_batch does this).
"""

import functools
import string
from typing import Sequence

import numpy as np

from ssmax_jax.data.tokenizers import Tokenizer

CITIES = ('Tokyo', 'Paris', 'Cairo', 'Lima', 'Sydney', 'Toronto', 'Mumbai', 'Berlin', 'Nairobi',
          'Seoul', 'Madrid', 'Jakarta', 'Chicago', 'Istanbul', 'Bangkok', 'Oslo', 'Dublin',
          'Santiago', 'Lagos', 'Vienna', 'Havana', 'Manila', 'Athens', 'Prague', 'Lisbon',
          'Hanoi', 'Karachi', 'Bogota', 'Warsaw', 'Helsinki')


def _rng(seed) -> np.random.Generator:
  return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


@functools.cache
def _ends_sentence_or_line(tokenizer: Tokenizer) -> np.ndarray:
  """[V] bool: the token's text ends a line or a sentence ('\\n', '.', '!', '?')."""
  ends = [tokenizer.decode([i]).rstrip(' ').endswith(('\n', '.', '!', '?'))
          for i in range(tokenizer.vocab_size)]
  ends[tokenizer.eot_id] = True
  return np.asarray(ends)


def needle_example(tokenizer: Tokenizer, haystack_tokens: np.ndarray, context_length: int,
                   depth: float | None = None, seed: int | np.random.Generator = 0,
                   cities: Sequence[str] = CITIES, city: str | None = None,
                   number: str | None = None) -> dict:
  """Builds haystack + needle + question + answer of exactly `context_length` tokens.

  The needle "The special magic {city} number is: {7 digits}." goes in at the line or sentence
  boundary of the haystack nearest to `depth` (fraction 0..1 of the haystack; random if None);
  the question "\\nWhat is the special magic {city} number? The special magic {city} number is:"
  ends the prompt and the answer is " {7 digits}". city, number and depth are drawn from `seed`
  when not given. The haystack is haystack_tokens[:H] with H the room left.

  Returns a dict: tokens [L] int32; loss_mask [L] float32 (1 on answer tokens); needle_span
  (start, end), the token span of the needle's number (decodes to " {digits}"); needle_start
  (the needle's first token, = number of haystack tokens before it); haystack_length;
  last_prompt_index (the token whose next-token prediction is the answer's first token);
  city, number, depth (the requested or drawn depth).
  """
  rng = _rng(seed)
  city = str(rng.choice(list(cities))) if city is None else city
  number = str(rng.integers(10**6, 10**7)) if number is None else number
  depth = float(rng.uniform()) if depth is None else float(depth)
  if not 0.0 <= depth <= 1.0:
    raise ValueError(f'depth must be in [0, 1], got {depth}.')
  if not (len(number) == 7 and number.isdigit()):
    raise ValueError(f'number must be 7 digits, got {number!r}.')
  number_ids = tokenizer.encode(f' {number}')
  question_ids = tokenizer.encode(
      f'\nWhat is the special magic {city} number? The special magic {city} number is:')
  prefix_text = f'The special magic {city} number is:'
  fixed = len(number_ids) + len(question_ids) + len(number_ids)
  # The needle takes a leading space after a sentence end and a trailing newline after a line end.
  longest = len(tokenizer.encode(' ' + prefix_text)) + len(tokenizer.encode('.\n'))
  shortest = len(tokenizer.encode(prefix_text)) + len(tokenizer.encode('.'))
  room = context_length - fixed - longest  # haystack tokens the needle may go among
  most = context_length - fixed - shortest  # haystack tokens kept with the shortest needle
  if room < 0 or len(haystack_tokens) < most:
    raise ValueError(f'context_length {context_length} needs up to {most} haystack tokens; '
                     f'haystack_tokens has {len(haystack_tokens)} (or context_length is too small).')
  hay = np.asarray(haystack_tokens[:most], dtype=np.int32)
  boundary = np.flatnonzero(_ends_sentence_or_line(tokenizer)[hay[:room]]) + 1
  candidates = np.concatenate([[0], boundary[boundary <= room]])
  at = int(candidates[np.argmin(np.abs(candidates - depth * room))])
  before = tokenizer.decode(hay[at - 1:at]) if at > 0 else '\n'
  prefix_ids = tokenizer.encode(('' if before.endswith((' ', '\n')) else ' ') + prefix_text)
  end_ids = tokenizer.encode('.\n' if before.endswith('\n') else '.')
  used = context_length - fixed - len(prefix_ids) - len(end_ids)  # haystack tokens kept
  start = at + len(prefix_ids)
  tokens = np.concatenate([hay[:at], prefix_ids, number_ids, end_ids, hay[at:used], question_ids,
                           number_ids]).astype(np.int32)
  assert len(tokens) == context_length, (len(tokens), context_length)
  loss_mask = np.zeros(context_length, np.float32)
  loss_mask[context_length - len(number_ids):] = 1.0
  return dict(tokens=tokens, loss_mask=loss_mask, needle_span=(start, start + len(number_ids)),
              needle_start=at, haystack_length=used,
              last_prompt_index=context_length - len(number_ids) - 1,
              city=city, number=number, depth=depth)


def kv_retrieval_example(tokenizer: Tokenizer, context_length: int,
                         seed: int | np.random.Generator = 0, key_length: int = 6,
                         value_digits: int = 6) -> dict:
  """Synthetic key-value retrieval of at most `context_length` tokens, deterministic from `seed`.

  Lines "{key} = {value}\\n" (random lowercase keys, random numbers) fill the context; one key is
  asked at the end: "What is the value of {key}? {key} =" and the answer is " {value}".

  Returns a dict: tokens [L] int32 (L <= context_length); loss_mask [L] float32 (1 on the answer);
  key, value; line_index (which line holds the answer); last_prompt_index.
  """
  rng = _rng(seed)
  # Largest question/answer for these key and value sizes, so that any queried key fits.
  reserve = len(tokenizer.encode('\nWhat is the value of ' + 'x' * key_length + '? '
                                 + 'x' * key_length + ' =')) + 2 * (value_digits + 1)
  lines, keys, values, used = [], set(), [], 0
  while True:
    key = ''.join(rng.choice(list(string.ascii_lowercase), key_length))
    if key in keys:
      continue
    value = str(rng.integers(10**(value_digits - 1), 10**value_digits))
    line = tokenizer.encode(f'{key} = {value}\n')
    if used + len(line) + reserve > context_length:
      break
    keys.add(key)
    lines.append((key, value, line))
    used += len(line)
  if not lines:
    raise ValueError(f'context_length {context_length} is too small for one key-value line.')
  line_index = int(rng.integers(len(lines)))
  key, value, _ = lines[line_index]
  question = tokenizer.encode(f'\nWhat is the value of {key}? {key} =')
  answer = tokenizer.encode(f' {value}')
  tokens = np.concatenate([l for _, _, l in lines] + [question, answer]).astype(np.int32)
  loss_mask = np.zeros(len(tokens), np.float32)
  loss_mask[-len(answer):] = 1.0
  return dict(tokens=tokens, loss_mask=loss_mask, key=key, value=value, line_index=line_index,
              last_prompt_index=len(tokens) - len(answer) - 1)
