"""Sampling: reproducibility, top-k = 1 is greedy, the first-token distribution fits the softmax, top-p and min-p
never emit a filtered token, and samples do not depend on the batch."""
import jax
import numpy as np
import pytest
from scipy import stats

from mmjax.generate import generate
from tests.numerics import assert_close_programs


def _next_token_probs(module, params, sequences: list[list[int]]) -> np.ndarray:
  """float64 [N, S, V] model probabilities of equally long sequences: [i, t] = p(. | sequences[i][:t + 1])."""
  logits = jax.jit(module.apply)({'params': params}, np.array(sequences)).logits
  probs = np.asarray(jax.nn.softmax(logits, axis=-1), np.float64)
  return probs / probs.sum(-1, keepdims=True)


def test_same_seed_same_samples_and_another_seed_differs(tiny, prompts):
  _, module, params, _ = tiny
  kwargs = dict(max_new_tokens=8, temperature=1.0, num_samples=3, top_p=0.9)
  first = generate(module, params, prompts, seed=7, **kwargs)
  again = generate(module, params, prompts, seed=7, **kwargs)
  other = generate(module, params, prompts, seed=8, **kwargs)
  tokens = lambda result: [c.tokens for row in result for c in row]  # noqa: E731
  assert tokens(first) == tokens(again)
  assert tokens(first) != tokens(other)
  assert len(set(map(tuple, tokens(first)))) > 1, 'the samples of a prompt must differ'


def test_top_k_1_is_greedy(tiny, prompts):
  _, module, params, _ = tiny
  greedy = generate(module, params, prompts, max_new_tokens=8)
  sampled = generate(module, params, prompts, max_new_tokens=8, temperature=0.8, top_k=1, num_samples=2)
  for (g,), samples in zip(greedy, sampled):
    for s in samples:
      assert s.tokens == g.tokens
      assert_close_programs(s.logprobs, g.logprobs)


def test_first_token_distribution_fits_the_softmax(tiny, prompts):
  """Chi-square goodness of fit over 4000 samples, with a power check: temperature 0.7 samples must not fit."""
  _, module, params, _ = tiny
  probs = _next_token_probs(module, params, prompts[:1])[0, -1]

  def p_value(temperature: float) -> float:
    (samples,) = generate(module, params, prompts[:1], max_new_tokens=1, temperature=temperature, num_samples=4000)
    counts = np.bincount([s.tokens[0] for s in samples], minlength=len(probs))
    expected = 4000 * probs
    common = expected >= 5  # the test needs >= 5 expected per bin: pool the rare tokens into one bin
    observed = np.append(counts[common], counts[~common].sum())
    return stats.chisquare(observed, np.append(expected[common], expected[~common].sum())).pvalue

  assert (4000 * probs >= 5).sum() >= 10, 'the first-token distribution must not be degenerate'
  assert p_value(1.0) > 1e-3
  assert p_value(0.7) < 1e-3


@pytest.mark.parametrize('filters', [dict(top_p=0.6), dict(top_k=4, top_p=0.95, min_p=0.1)])
def test_filters_never_emit_a_removed_token(tiny, prompts, filters):
  _, module, params, _ = tiny
  results = generate(module, params, prompts[:2], max_new_tokens=6, temperature=1.0, num_samples=50, **filters)
  emitted = 0
  for prompt, samples in zip(prompts, results):
    sequences = [prompt + s.tokens for s in samples]
    for sequence, probs in zip(sequences, _next_token_probs(module, params, sequences)):
      for t in range(len(prompt), len(sequence)):
        p = probs[t - 1]
        order = np.argsort(-p)
        allowed = set(order[:filters.get('top_k', len(p))])
        if 'top_p' in filters:  # the nucleus: the most likely tokens until their mass reaches top_p
          size = int(np.searchsorted(np.cumsum(p[order]), filters['top_p'])) + 1
          allowed &= set(order[:size])
        if 'min_p' in filters:
          allowed &= set(np.flatnonzero(p >= filters['min_p'] * p.max()))
        assert sequence[t] in allowed
        emitted += 1
  assert emitted == 2 * 50 * 6
  assert len({s.tokens[0] for s in results[0]}) > 1, 'the filters must leave a choice'


def test_samples_do_not_depend_on_the_batch(tiny, prompts):
  _, module, params, _ = tiny
  kwargs = dict(max_new_tokens=8, temperature=1.0, num_samples=3, top_p=0.9, seed=7)  # shapes of the first test
  together = generate(module, params, prompts, **kwargs)
  alone = generate(module, params, prompts[2:], request_ids=[2], **kwargs)
  assert [s.tokens for s in together[2]] == [s.tokens for s in alone[0]]
