"""`score` against transformers' full-sequence log-probabilities, and against `generate`'s own log-probabilities."""
import jax
import numpy as np
import torch

from mmjax.generate import decode_loop, generate, score
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


def test_a_shared_prompt_is_prefilled_once(tiny, prompts, monkeypatch):
  """Multiple choice: pairs that share a prompt fork one prefilled row; each score equals the full forward pass."""
  _, module, params, _ = tiny
  prefilled = []
  prefill_prompts = decode_loop.prefill_prompts
  monkeypatch.setattr(decode_loop, 'prefill_prompts', lambda adapter, params, fitted, *args: (
      prefilled.append(len(fitted)), prefill_prompts(adapter, params, fitted, *args))[1])
  pairs = [(prompts[1], [3, 4, 5]), (prompts[0], [9]), (prompts[1], [7, 7]), (prompts[1], [])]
  got = score(module, params, [p for p, _ in pairs], [c for _, c in pairs])
  assert prefilled == [2]
  ids, mask = np.zeros((4, 16), np.int32), np.zeros((4, 16), np.int32)  # right-padded: one forward pass
  for i, (prompt, continuation) in enumerate(pairs):
    ids[i, :len(prompt + continuation)], mask[i, :len(prompt + continuation)] = prompt + continuation, 1
  full = np.asarray(jax.nn.log_softmax(module.apply({'params': params}, ids, attention_mask=mask).logits, axis=-1))
  for (prompt, continuation), logprobs, want in zip(pairs, got, full):
    assert logprobs.shape == (len(continuation),)
    assert_close_programs(logprobs, want[np.arange(len(prompt) - 1, len(prompt) + len(continuation) - 1),
                                         continuation])
