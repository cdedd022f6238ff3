"""Revision data, chains, mixes and selection on hand-made attempts and a scripted reviser and verifier."""
from __future__ import annotations

import numpy as np
import pytest

from experiments.test_time_compute.revisions import (
  budget_mixes,
  chain_scores,
  correct_to_wrong_rate,
  edit_distance,
  flat_majority,
  hierarchical_select,
  revision_chains,
  revision_examples,
  take_mix,
)


def table_distance(a, b):
  """The textbook dynamic programme."""
  row = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    prev, row[0] = row[0], i
    for j, cb in enumerate(b, 1):
      prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
  return row[-1]


def test_edit_distance_matches_the_table():
  assert edit_distance('kitten', 'sitting') == 3 and edit_distance('', 'abc') == 3 and edit_distance('ab', 'ab') == 0
  rng = np.random.default_rng(0)
  for _ in range(200):  # lengths cross the 64-bit word boundary; a small alphabet makes many matches
    a, b = (''.join(rng.choice(list('abc\n'), rng.integers(0, 90))) for _ in range(2))
    assert edit_distance(a, b) == table_distance(a, b) == edit_distance(b, a)


def test_revision_examples_put_the_closest_wrong_attempt_last():
  correct_text = 'x = 3 + 4 = 7'
  wrong = ['x = 3 + 4 = 8', 'x = 2', 'the answer is 12', 'x = 3 * 4 = 12', 'no idea', 'x = 3 + 5 = 8']
  attempts = wrong[:3] + [correct_text, 'unparsable'] + wrong[3:] + ['x=7']
  labels = [False] * 3 + [True, None] + [False] * 3 + [True]
  lengths = []
  for seed in range(60):
    examples = revision_examples(7, attempts, labels, np.random.default_rng(seed))
    assert [e.target for e in examples] == [correct_text, 'x=7'] and all(e.question == 7 for e in examples)
    for e in examples:
      lengths.append(len(e.context))
      assert set(e.context) <= set(wrong) and len(set(e.context)) == len(e.context)
      if e.context:
        assert e.context[-1] == min(wrong, key=lambda w: table_distance(w, e.target))
  assert set(lengths) == {0, 1, 2, 3, 4}  # n ~ U{0..4}
  capped = revision_examples(0, ['a', 'b', 'c'], [False, True, False], np.random.default_rng(0))
  assert all(len(e.context) <= 2 for e in capped)
  assert revision_examples(0, ['a', 'b'], [True, None], np.random.default_rng(0))[0].context == ()  # none wrong
  with pytest.raises(ValueError, match='2 attempts but 1 labels'):
    revision_examples(0, ['a', 'b'], [True], np.random.default_rng(0))


class ScriptedReviser:
  """Attempt j of a chain is 'q<q>:<j>', so each request's context can be checked."""

  def __init__(self):
    self.calls = []

  def revise(self, requests):
    self.calls.append(list(requests))
    return [f'q{q}:{len(ctx) if len(ctx) < 4 else int(ctx[-1].split(":")[1]) + 1}' for q, ctx in requests]


class RecordingVerifier:

  def __init__(self):
    self.requests = []

  def score(self, requests):
    self.requests += requests
    return [[0.5] * (len(attempts) - 1) + [len(attempts) / 10] for _, attempts in requests]


def test_chains_keep_the_last_four_attempts_in_context():
  reviser = ScriptedReviser()
  chains = revision_chains(reviser, [3, 5], 2, 7)
  assert len(reviser.calls) == 7 and all(len(c) == 4 for c in reviser.calls)  # one call per step for all chains
  assert chains[1][0] == [f'q5:{j}' for j in range(7)] and len(chains) == 2 and len(chains[0]) == 2
  assert reviser.calls[6][0] == (3, ('q3:2', 'q3:3', 'q3:4', 'q3:5'))
  assert reviser.calls[0][0] == (3, ())
  verifier = RecordingVerifier()
  scores = chain_scores(verifier, [3, 5], chains)
  assert len(verifier.requests) == 2 * 2 * 7
  assert verifier.requests[6] == (3, ('q3:2', 'q3:3', 'q3:4', 'q3:5', 'q3:6'))  # attempt 6 after its context
  assert scores[0][0] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.5])


def test_hierarchical_selection_against_flat_majority():
  answers = [['1', '2', '2'], ['2', '2', '2'], ['3', '3', '2'], [None, None, None]]
  scores = [[0.9, 0.2, 0.2], [0.1, 0.1, 0.1], [0.3, 0.3, 0.1], [1.0, 1.0, 1.0]]
  # Chain winners: 1 (0.9 > 0.4), 2 (0.3), 3 (0.6 > 0.1), none; across them 1 wins. 2 is the most frequent answer.
  assert hierarchical_select(answers, scores) == '1'
  assert flat_majority(answers) == '2'
  assert hierarchical_select([[None]], [[0.5]]) is None


def test_budget_mixes_and_taking_a_mix():
  assert budget_mixes(8) == [(8, 1), (4, 2), (2, 4), (1, 8)]
  assert all(p * s == 128 for p, s in budget_mixes(128)) and len(budget_mixes(128)) == 8
  chains = [[f'{c}{j}' for j in range(4)] for c in 'abc']
  assert take_mix(chains, 2, 3) == [['a0', 'a1', 'a2'], ['b0', 'b1', 'b2']]
  with pytest.raises(ValueError, match='does not fit'):
    take_mix(chains, 2, 5)


def test_correct_to_wrong_rate():
  assert correct_to_wrong_rate([[True, False, True, True], [False, True, False]]) == pytest.approx(2 / 3)
  with pytest.raises(ValueError, match='no correct attempt'):
    correct_to_wrong_rate([[False, False], [True]])
