"""Limits and bookkeeping: the context window, left truncation, max_new_tokens=0, bucketed compilations, streaming,
and clear errors for bad arguments."""
import dataclasses

import numpy as np
import pytest

from mmjax.generate import compile_counts, generate, stream
from mmjax.generate.batching import bucket


@pytest.fixture(scope='module')
def short_context(tiny):
  """The tiny model with a 32-token context."""
  _, module, params, _ = tiny
  return module.clone(config=dataclasses.replace(module.config, max_position_embeddings=32)), params


def test_a_prompt_longer_than_the_context_is_an_error(short_context):
  module, params = short_context
  with pytest.raises(ValueError, match=r'prompt 1 has 30 tokens; with 8 new tokens it exceeds the context of 32 '
                                       r'tokens by 6.*truncate="left"'):
    generate(module, params, [[1, 2], [3] * 30], max_new_tokens=8)


def test_left_truncation_keeps_the_last_tokens(short_context):
  module, params = short_context
  prompt = [int(t) for t in np.random.default_rng(2).integers(0, 128, 30)]
  (cut,) = generate(module, params, [prompt], max_new_tokens=8, truncate='left')[0]
  (kept,) = generate(module, params, [prompt[6:]], max_new_tokens=8)[0]
  assert cut.tokens == kept.tokens and len(cut.tokens) == 8


def test_zero_new_tokens(tiny, prompts):
  _, module, params, _ = tiny
  result = generate(module, params, prompts, max_new_tokens=0, temperature=1.0, num_samples=2)
  assert [[(c.tokens, c.logprobs.shape, c.finish_reason) for c in row] for row in result] == \
      [[([], (0,), 'length')] * 2] * 3


def test_many_prompt_lengths_compile_few_shapes(tiny):
  _, module, params, _ = tiny
  rng = np.random.default_rng(3)
  before = compile_counts()
  for length in range(2, 31):
    batch = [[int(t) for t in rng.integers(0, 128, n)] for n in (length, length // 2)]
    assert len(generate(module, params, batch, max_new_tokens=3 + length % 6)) == 2
  new = {name: count - before.get(name, 0) for name, count in compile_counts().items()}
  # 29 prompt lengths and 6 budgets fall into two prompt buckets (16, 32) and one budget bucket (8).
  assert all(count <= 2 for count in new.values()), new
  assert bucket(40) == 64 and bucket(300) == 384 and bucket(3, minimum=1) == 4


def test_stream_yields_every_token_and_ends_with_the_result(tiny, prompts):
  _, module, params, _ = tiny
  kwargs = dict(max_new_tokens=8, temperature=1.0, num_samples=3, top_p=0.9, seed=7)
  chunks = list(stream(module, params, prompts, chunk=1, **kwargs))
  final = generate(module, params, prompts, **kwargs)
  assert len(chunks) == 8
  for step, completions in enumerate(chunks[:-1]):
    assert all(len(c.tokens) == step + 1 and c.finish_reason is None for row in completions for c in row)
  assert [[c.tokens for c in row] for row in chunks[-1]] == [[c.tokens for c in row] for row in final]
  assert all(c.finish_reason == 'length' for row in chunks[-1] for c in row)


@pytest.mark.parametrize('kwargs, message', [
    (dict(top_k=5), 'pass temperature > 0'),
    (dict(num_samples=2), 'identical copies'),
    (dict(temperature=1.0, top_p=1.5), r'top_p must be in \(0, 1\]'),
    (dict(eos_token_id=128), r'eos_token_id must hold token ids in \[0, 128\)'),
    (dict(stop_sequences=[[]]), 'empty sequence'),
    (dict(pixel_values=np.zeros((1, 3, 8, 8))), 'text-only model'),
])
def test_bad_arguments_are_clear_errors(tiny, kwargs, message):
  _, module, params, _ = tiny
  with pytest.raises(ValueError, match=message):
    generate(module, params, [[1, 2, 3]], max_new_tokens=4, **kwargs)


def test_bad_prompts_are_clear_errors(tiny):
  _, module, params, _ = tiny
  with pytest.raises(ValueError, match=r'prompt 0 has token ids outside \[0, 128\)'):
    generate(module, params, [[1, 200]], max_new_tokens=4)
  with pytest.raises(ValueError, match='prompt 1 must be a non-empty list of int token ids'):
    generate(module, params, [[1], []], max_new_tokens=4)
