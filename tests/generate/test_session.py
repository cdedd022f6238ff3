"""Sessions: prefill + extend + decode equals one `generate`; forks made by `select` equal independent runs;
decoding in several calls continues one sampling stream; `logits_at` equals the model's full forward pass."""
import jax
import numpy as np
import pytest

from mmjax.generate import generate, prefill
from tests.numerics import assert_close_programs


def _tokens(completions) -> list[list[int]]:
  return [c.tokens for c in completions]


def test_prefill_extend_decode_equals_one_generate(tiny, prompts):
  _, module, params, _ = tiny
  heads, tails = [p[:3] for p in prompts], [p[3:] for p in prompts[:2]] + [[]]  # ragged tails, one empty
  session = prefill(module, params, heads, max_new_tokens=24)
  session.extend(tails)
  got = session.decode(max_new_tokens=8)
  want = generate(module, params, [h + t for h, t in zip(heads, tails)], max_new_tokens=8)
  assert _tokens(got) == [c.tokens for (c,) in want]
  for g, (w,) in zip(got, want):
    assert g.finish_reason == w.finish_reason
    assert_close_programs(g.logprobs, w.logprobs)
  assert [s.tolist() for s in session.sequences] == [h + t + c.tokens for h, t, c in zip(heads, tails, got)]


def test_decoding_in_two_calls_continues_one_stream(tiny, prompts):
  _, module, params, _ = tiny
  kwargs = dict(temperature=1.0, top_p=0.95)
  once = prefill(module, params, prompts, max_new_tokens=16, seed=4).decode(max_new_tokens=8, **kwargs)
  twice = prefill(module, params, prompts, max_new_tokens=16, seed=4)
  first, second = twice.decode(max_new_tokens=3, **kwargs), twice.decode(max_new_tokens=5, **kwargs)
  assert [a.tokens + b.tokens for a, b in zip(first, second)] == _tokens(once)
  for a, b, c in zip(first, second, once):
    assert_close_programs(np.concatenate([a.logprobs, b.logprobs]), c.logprobs)


def test_select_forks_equal_independent_runs(tiny, prompts):
  _, module, params, _ = tiny
  session = prefill(module, params, prompts[:2], max_new_tokens=16)
  start = session.decode(max_new_tokens=4)
  forks = session.select([1, 0, 1])
  forked = forks.decode(max_new_tokens=6, eos_token_id=7)
  histories = [prompts[r] + start[r].tokens for r in (1, 0, 1)]
  alone = generate(module, params, histories, max_new_tokens=6, eos_token_id=7)
  assert _tokens(forked) == [c.tokens for (c,) in alone]
  for f, (a,) in zip(forked, alone):
    assert f.finish_reason == a.finish_reason
    assert_close_programs(f.logprobs, a.logprobs)
  # The parent session is untouched by its forks.
  assert _tokens(session.decode(max_new_tokens=6, eos_token_id=7)) == _tokens(forked)[1:3]


def test_sampled_forks_draw_independently_and_reproducibly(tiny, prompts):
  _, module, params, _ = tiny

  def search() -> list[list[int]]:
    session = prefill(module, params, prompts[:1], max_new_tokens=16, seed=2)
    session.decode(max_new_tokens=2, temperature=1.0)
    forks = session.select([0, 0, 0, 0])
    forks.decode(max_new_tokens=3, temperature=1.0)
    return [s.tolist() for s in forks.select([3, 1]).sequences] + _tokens(forks.decode(max_new_tokens=3,
                                                                                      temperature=1.0))

  first = search()
  assert len({tuple(t) for t in first[2:]}) > 1, 'forks of one row drew the same stream'
  assert search() == first


def test_logits_at_equals_the_full_forward_pass(tiny, prompts):
  _, module, params, _ = tiny
  session = prefill(module, params, prompts[:2], max_new_tokens=16)
  session.decode(max_new_tokens=3)
  session.extend([[5, 6], []])
  positions = [[0, 4, len(session.sequences[0]) - 1], [len(session.sequences[1]) - 1]]
  got = session.logits_at(positions)
  for sequence, where, logits in zip(session.sequences, positions, got):
    full = jax.jit(module.apply)({'params': params}, np.asarray(sequence)[None]).logits[0]
    assert_close_programs(logits, np.asarray(full)[where])
  assert_close_programs(got[1][-1], np.asarray(session.logits[1]))  # the pending next-token logits


def test_session_errors_are_clear(tiny, prompts):
  _, module, params, _ = tiny
  session = prefill(module, params, prompts[:2], max_new_tokens=8)
  with pytest.raises(ValueError, match='prefill with a larger max_new_tokens'):
    session.decode(max_new_tokens=64)
  with pytest.raises(ValueError, match='one token list per row'):
    session.extend([[1]])
  with pytest.raises(ValueError, match=r'row indices in \[0, 2\)'):
    session.select([2])
  with pytest.raises(ValueError, match=r'positions must be in \[0, 5\)'):
    session.logits_at([[5], []])


def test_extending_up_to_the_cache_end_keeps_every_row(tiny, prompts):
  """A padded chunk that runs past the cache's end in some row must not overwrite earlier slots of any row."""
  _, module, params, _ = tiny
  session = prefill(module, params, prompts[:2], max_new_tokens=8)  # rows of 5 and 11 tokens
  room = session.capacity - 11
  tail = prompts[2][:room - 1]
  session.extend([[], tail])
  # Row 1 now has one free slot; row 0 takes a long chunk, whose padding runs past the end of row 1.
  head = [int(t) for t in np.random.default_rng(5).integers(0, 128, session.capacity - 6)]
  session.extend([head, []])
  got = session.decode(max_new_tokens=1)
  want = generate(module, params, [prompts[0] + head, prompts[1] + tail], max_new_tokens=1)
  assert _tokens(got) == [c.tokens for (c,) in want]
  for g, (w,) in zip(got, want):
    assert_close_programs(g.logprobs, w.logprobs)


def test_a_stream_left_early_leaves_a_clear_error(tiny, prompts):
  _, module, params, _ = tiny
  session = prefill(module, params, prompts[:2], max_new_tokens=8)
  keep = session.select([0, 1])  # a copy survives its parent's decode
  chunks = session.stream(max_new_tokens=4, chunk=1)
  assert all(len(c.tokens) == 1 for c in next(chunks))
  with pytest.raises(ValueError, match='stream was left before its end'):
    session.decode(max_new_tokens=2)
  assert _tokens(keep.decode(max_new_tokens=4)) == [c.tokens for (c,) in generate(module, params, prompts[:2],
                                                                                   max_new_tokens=4)]


def test_score_appends_and_returns_the_tokens_logprobs(tiny, prompts):
  """session.score after a decode: the appended tokens' log-probabilities equal the full forward pass, and the
  rows continue like `extend`."""
  _, module, params, _ = tiny
  session = prefill(module, params, prompts[:2], max_new_tokens=16)
  session.decode(max_new_tokens=3)
  before = [s.tolist() for s in session.sequences]
  tails = [[5, 6, 7], [9]]
  got = session.score(tails)
  ids, mask = np.zeros((2, 16), np.int32), np.zeros((2, 16), np.int32)  # right-padded: one forward pass
  for r, (history, tail) in enumerate(zip(before, tails)):
    ids[r, :len(history + tail)], mask[r, :len(history + tail)] = history + tail, 1
  full = np.asarray(jax.nn.log_softmax(module.apply({'params': params}, ids, attention_mask=mask).logits, axis=-1))
  for history, tail, logprobs, want in zip(before, tails, got, full):
    assert_close_programs(logprobs, want[np.arange(len(history) - 1, len(history) + len(tail) - 1), tail])
  assert [s.tolist() for s in session.sequences] == [h + t for h, t in zip(before, tails)]
  assert session.score([[], []])[0].shape == (0,)
  want = generate(module, params, [h + t for h, t in zip(before, tails)], max_new_tokens=4)
  assert _tokens(session.decode(max_new_tokens=4)) == [c.tokens for (c,) in want]
