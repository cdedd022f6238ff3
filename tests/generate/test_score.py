"""`score` against transformers' full-sequence log-probabilities, and against `generate`'s own log-probabilities."""
import numpy as np
import torch

from mmjax.generate import generate, score
from tests.numerics import assert_close_programs, assert_close_torch


def test_score_matches_transformers(tiny, prompts):
  hf, module, params, _ = tiny
  rng = np.random.default_rng(1)
  continuations = [[int(t) for t in rng.integers(0, 128, n)] for n in (7, 1, 12)]
  got = score(module, params, prompts, continuations)
  for prompt, continuation, logprobs in zip(prompts, continuations, got):
    ids = torch.tensor([prompt + continuation])
    with torch.no_grad():
      want = torch.log_softmax(hf(ids).logits[0].float(), -1).numpy()
    expected = want[np.arange(len(prompt) - 1, len(prompt) + len(continuation) - 1), continuation]
    assert logprobs.shape == (len(continuation),)
    assert_close_torch(logprobs, expected)


def test_score_of_a_generated_continuation_equals_its_logprobs(tiny, prompts):
  _, module, params, _ = tiny
  completions = [c for (c,) in generate(module, params, prompts, max_new_tokens=8)]
  scored = score(module, params, prompts, [c.tokens for c in completions])
  for completion, logprobs in zip(completions, scored):
    assert_close_programs(logprobs, completion.logprobs)


def test_empty_continuation(tiny, prompts):
  _, module, params, _ = tiny
  (logprobs,) = score(module, params, prompts[:1], [[]])
  assert logprobs.shape == (0,)
