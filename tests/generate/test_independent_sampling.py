"""Independent sampling: every prompt, call and request draws its own stream, reproducibly from the seed."""
import jax
import numpy as np
import pytest

from mmjax.generate import generate
from mmjax.generate.session import request_keys

KWARGS = dict(max_new_tokens=8, temperature=1.0, seed=3)


def _tokens(result) -> list[list[int]]:
  return [c.tokens for row in result for c in row]


def test_request_keys_differ_across_requests_and_follow_the_seed():
  keys = np.asarray(jax.random.key_data(request_keys(0, np.array([0, 1, 5]))))
  assert len({tuple(np.ravel(k)) for k in keys}) == 3
  again = np.asarray(jax.random.key_data(request_keys(0, np.array([5]))))
  np.testing.assert_array_equal(again, keys[2:])  # a request's stream ignores the batch
  assert not np.array_equal(np.asarray(jax.random.key_data(request_keys(1, np.array([0, 1, 5])))), keys)


def test_identical_prompts_in_one_call_sample_independently(tiny, prompts):
  _, module, params, _ = tiny
  result = generate(module, params, [prompts[1]] * 4, **KWARGS)
  assert len({tuple(t) for t in _tokens(result)}) > 1, 'sample 0 of every prompt drew the same stream'


def test_consecutive_requests_differ_and_a_run_reproduces(tiny, prompts):
  _, module, params, _ = tiny
  run = [generate(module, params, prompts[:1], request_ids=[i], **KWARGS) for i in range(4)]
  assert len({tuple(_tokens(r)[0]) for r in run}) > 1, 'the same prompt in later calls drew the same stream'
  again = [generate(module, params, prompts[:1], request_ids=[i], **KWARGS) for i in range(4)]
  assert [_tokens(r) for r in run] == [_tokens(r) for r in again]
  together = generate(module, params, prompts[:1] * 4, request_ids=[0, 1, 2, 3], **KWARGS)
  assert _tokens(together) == [_tokens(r)[0] for r in run], 'a request must draw the same alone or batched'


def test_sample_0_is_the_single_sample_and_samples_differ(tiny, prompts):
  _, module, params, _ = tiny
  (single,) = generate(module, params, prompts[:1], **KWARGS)
  (samples,) = generate(module, params, prompts[:1], num_samples=4, **KWARGS)
  assert samples[0].tokens == single[0].tokens
  assert len({tuple(c.tokens) for c in samples}) > 1


@pytest.mark.parametrize('request_ids, message', [([0, 1], 'one int in'), ([-1], 'one int in'),
                                                  ([0.5], 'one int in')])
def test_bad_request_ids_are_clear_errors(tiny, prompts, request_ids, message):
  _, module, params, _ = tiny
  with pytest.raises(ValueError, match=message):
    generate(module, params, prompts[:1], request_ids=request_ids, **KWARGS)
