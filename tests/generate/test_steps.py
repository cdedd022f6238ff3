"""Step-delimited generation: reusing each path's cache across rounds (forks gathered by `select`, the cache grown
by re-prefilling when a row runs out of room) gives the steps that re-prefilling every history from scratch gives,
greedy and sampled; steps end at a delimiter (across token boundaries too), EOS or the step budget."""
import numpy as np
import pytest

from mmjax.generate import generate
from mmjax.generate.steps import StepGenerator
from tests.numerics import assert_close_programs

# A random vocabulary of 128 ids: ~1 in 8 tokens ends a step, 1 in 40 ends a path; one two-token delimiter.
DELIMITERS = [[t] for t in range(0, 128, 8)] + [[3, 5]]
EOS = [1, 42, 99]
# Round r expands these parents (indices into the previous round's paths): forks, drops and reorders; 4 rows a
# round keep the compiled shapes few.
PARENTS = [[0, 0, 0, 1], [3, 0, 0, 2], [1, 1, 3, 0], [3, 3, 2, 0], [0, 2, 1, 3], [1, 2, 3, 0]]


def _search(module, params, prompts, *, reuse_cache: bool, temperature: float):
  gen = StepGenerator(module, params, delimiters=DELIMITERS, eos_token_id=EOS, max_step_tokens=8,
                      temperature=temperature, seed=3, room=6, reuse_cache=reuse_cache)
  paths, rounds = gen.start(prompts), []
  for parents in PARENTS:
    paths, steps = gen.step(paths, parents)
    rounds.append(steps)
  return gen, paths, rounds


@pytest.mark.parametrize('temperature', [0.0, 1.0])
def test_cache_reuse_equals_reprefilling(tiny, prompts, temperature):
  _, module, params, _ = tiny
  prompts = prompts[:2]  # 5 and 11 tokens: rows of 32 cache slots, outgrown within these rounds
  reused, paths, got = _search(module, params, prompts, reuse_cache=True, temperature=temperature)
  fresh, fresh_paths, want = _search(module, params, prompts, reuse_cache=False, temperature=temperature)
  for g_round, w_round in zip(got, want):
    assert [s.tokens for s in g_round] == [s.tokens for s in w_round]
    assert [s.reason for s in g_round] == [s.reason for s in w_round]
    for g, w in zip(g_round, w_round):
      assert_close_programs(g.logprobs, w.logprobs)
  assert [s.tolist() for s in paths.sequences] == [s.tolist() for s in fresh_paths.sequences]
  assert [s.tolist() for s in paths.session.sequences] == [s.tolist() for s in paths.sequences]
  reasons = {s.reason for steps in got for s in steps}
  assert {'delimiter', 'length'} <= reasons, reasons
  # Re-prefilling reads nothing from a cache; reuse prefills the prompts once, and again only when a row outgrew
  # its room (which these rounds force), reading every other round's history from the cache.
  assert all(r.reused == 0 for r in fresh.rounds)
  assert fresh.rounds[0].prefilled == 0 and all(r.prefilled > 0 for r in fresh.rounds[1:])
  assert reused.rounds[0].prefilled == sum(len(p) for p in prompts)
  grown = [r for r in reused.rounds[1:] if r.prefilled]
  assert 1 <= len(grown) < len(PARENTS) - 1
  assert all(r.prefilled + r.reused == f.prefilled for r, f in zip(reused.rounds[1:], fresh.rounds[1:]))
  assert [r.generated for r in reused.rounds] == [r.generated for r in fresh.rounds]


def test_steps_end_at_a_delimiter_eos_or_the_budget(tiny, prompts):
  """Greedy steps are the greedy continuation cut after the first delimiter (a two-token one across the token
  boundary) or EOS; the next step continues where the last one ended."""
  _, module, params, _ = tiny
  (full,), = generate(module, params, prompts[:1], max_new_tokens=12)
  pair = full.tokens[4:6]  # a two-token delimiter that the continuation reaches at tokens 4-5
  first = next(i for i in range(1, len(full.tokens)) if full.tokens[i - 1:i + 1] == pair)
  eos = full.tokens[first + 3]
  assert first >= 2 and eos not in full.tokens[:first + 3], 'the fixture model no longer suits this test'
  gen = StepGenerator(module, params, delimiters=[pair], eos_token_id=eos, max_step_tokens=1, temperature=0.0)
  paths, (one,) = gen.step(gen.start(prompts[:1]), [0])
  gen.max_step_tokens = 12
  paths, (two,) = gen.step(paths, [0])
  paths, (three,) = gen.step(paths, [0])
  assert (one.tokens, one.reason, one.finished) == (full.tokens[:1], 'length', False)
  assert one.tokens + two.tokens == full.tokens[:first + 1] and two.reason == 'delimiter'
  assert three.tokens == full.tokens[first + 1:first + 4] and three.reason == 'eos' and three.finished
  assert_close_programs(np.concatenate([one.logprobs, two.logprobs, three.logprobs]), full.logprobs[:first + 4])


def test_forks_draw_independently_and_reproducibly(tiny, prompts):
  _, module, params, _ = tiny

  def run():
    gen = StepGenerator(module, params, delimiters=[[72]], eos_token_id=None, max_step_tokens=5,
                        temperature=1.0, seed=7)
    return [s.tokens for s in gen.step(gen.start(prompts[:1]), [0] * 6)[1]]

  first = run()
  assert len({tuple(t) for t in first}) > 1, 'children of one parent drew the same step'
  assert run() == first


def test_errors_are_clear(tiny, prompts):
  _, module, params, _ = tiny
  gen = StepGenerator(module, params, delimiters=[[0]], eos_token_id=None, max_step_tokens=32768 - 12,
                      reuse_cache=False)
  paths = gen.start(prompts)
  with pytest.raises(ValueError, match='path 2 holds 17 tokens.*exceeds the model context'):
    gen.step(paths, [0, 2])
  with pytest.raises(ValueError, match=r'parent indices in \[0, 3\)'):
    gen.step(paths, [3])
  with pytest.raises(ValueError, match='non-empty token-id sequences'):
    StepGenerator(module, params, delimiters=[[]], eos_token_id=None)
