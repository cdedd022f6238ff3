"""Search algorithms on a scripted policy and PRM (no model): every draw and score is fixed by hand, so each
algorithm's completions, answer and compute are known exactly."""
from __future__ import annotations

import numpy as np
import pytest

from experiments.test_time_compute.protocols import Step
from experiments.test_time_compute.search import (
  PAPER_STRATEGIES,
  Strategy,
  aggregate,
  argmax_answer,
  beam_search,
  best_of_n,
  dvts,
  majority_vote,
  weighted_vote,
)


class ScriptedPolicy:
  """tree[q][steps so far] = the children of that path, as 'text|score' ('=x' ends the solution with answer x).
  Sampled draws for the same path cycle through its children; greedy draws take the first child."""

  def __init__(self, tree):
    self.tree, self.draws, self.calls = tree, {}, []

  def extend(self, requests, *, greedy=False):
    self.calls.append((list(requests), greedy))
    out = []
    for q, steps in requests:
      children = self.tree[q][steps]
      i = 0 if greedy else self.draws.get((q, steps), 0)
      if not greedy:
        self.draws[q, steps] = i + 1
      text = children[i % len(children)]
      out.append(Step(text, text.startswith('=')))
    return out


class ScriptedPRM:
  """A step's score is written in its text after '|'."""

  def __init__(self):
    self.calls = 0

  def score(self, requests):
    self.calls += 1
    return [[float(s.split('|')[1]) for s in steps] for _, steps in requests]


def answer_of(text):
  return text.rsplit('=', 1)[1].split('|')[0] if '=' in text else None


def test_aggregations_and_votes():
  assert aggregate([0.5, 0.2, 0.8]) == 0.8
  assert aggregate([0.5, 0.2, 0.8], 'min') == 0.2
  assert aggregate([0.5, 0.2, 0.8], 'prod') == pytest.approx(0.08)
  with pytest.raises(ValueError, match='no scored steps'):
    aggregate([])
  with pytest.raises(ValueError, match='unknown aggregation'):
    aggregate([0.5], 'mean')
  answers, weights = ['1', '2', '2', None, '3'], [0.9, 0.3, 0.4, 5.0, 0.1]
  assert weighted_vote(answers, weights) == '1'  # 0.9 > 0.7: the PRM overrules the majority
  assert majority_vote(answers) == '2'
  assert argmax_answer(answers, weights) == '1'  # the unanswered sample's 5.0 abstains
  assert weighted_vote(['a', 'b'], [0.5, 0.5]) == 'a' and majority_vote(['b', 'a']) == 'b'  # ties: first seen
  assert weighted_vote([None, None], [0.1, 0.2]) is None and argmax_answer([None], [1.0]) is None


BON_TREE = {
  0: {(): ['a|0.5', '=5|0.2', '=6|0.9'], ('a|0.5',): ['=5|0.3']},
  1: {(): ['=8|0.4', 'b|0.7'], ('b|0.7',): ['c|0.7'], ('b|0.7', 'c|0.7'): ['=9|0.1']},
}


def test_best_of_n_votes_and_batching():
  policy, prm = ScriptedPolicy(BON_TREE), ScriptedPRM()
  result = best_of_n(policy, prm, [0, 1], 3, answer_fn=answer_of)
  q0, q1 = result.completions
  assert [c.answer for c in q0] == ['5', '5', '6'] and [c.answer for c in q1] == ['8', '9', '8']
  assert q0[0].steps == ('a|0.5', '=5|0.3') and q0[0].scores == (0.5, 0.3) and all(c.finished for c in q0)
  assert result.predictions('weighted') == ['6', '8']  # q0: 0.9 for 6 against 0.3 + 0.2 for 5
  assert result.predictions('majority') == ['5', '8']
  assert result.predictions('argmax') == ['6', '8']
  assert result.predictions('weighted', 'min') == ['6', '8']
  assert result.predictions('weighted', n=2) == ['5', '8']  # subsampled: the first two of each question
  # One policy call per round for both questions, each round only the unfinished paths; one PRM call.
  assert [len(r) for r, _ in policy.calls] == [6, 2, 1]
  assert result.policy_calls == 3 and result.verifier_calls == prm.calls == 1
  assert result.generations == 3 and result.steps_generated == (4, 5)


BEAM_TREE = {0: {
  (): ['a|0.9', 'b|0.1', 'c|0.8', 'd|0.2'],
  ('a|0.9',): ['=1|0.95', 'a2|0.5'],
  ('c|0.8',): ['=2|0.3', 'c2|0.6'],
  ('a|0.9', 'a2|0.5'): ['=1|0.7'],
  ('c|0.8', 'c2|0.6'): ['=3|0.4', '=3|0.45'],
}, 1: {(): ['=4|0.5']}}


def test_beam_search_duplicates_survivors_and_retires_finished():
  policy, prm = ScriptedPolicy(BEAM_TREE), ScriptedPRM()
  result = beam_search(policy, prm, [0, 1], 4, 2, answer_fn=answer_of)
  rounds = [r for r, _ in policy.calls]
  # Round 2: the top N/M = 2 of round 1 (a, c), duplicated cyclically back to N = 4; question 1 finished in round 1.
  assert rounds[1] == [(0, ('a|0.9',)), (0, ('c|0.8',)), (0, ('a|0.9',)), (0, ('c|0.8',))]
  # Round 3: =1 and =2 retired, so only the unfinished a2 and c2 survive, again duplicated to 4.
  assert sorted(rounds[2]) == sorted([(0, ('c|0.8', 'c2|0.6')), (0, ('a|0.9', 'a2|0.5'))] * 2)
  assert len(rounds) == 3 and result.policy_calls == 3 and result.verifier_calls == 3
  q0, q1 = result.completions
  # Exactly N completions although 6 paths finished (search-and-learn #42): the best finishers of round 3 fill up.
  assert [c.steps[-1] for c in q0] == ['=1|0.95', '=2|0.3', '=1|0.7', '=1|0.7'] and all(c.finished for c in q0)
  assert [c.answer for c in q1] == ['4'] * 4
  assert result.predictions() == ['1', '4'] and result.generations == 4 and result.steps_generated == (12, 4)


def test_beam_search_round_limit_returns_truncated_paths():
  result = beam_search(ScriptedPolicy(BEAM_TREE), ScriptedPRM(), [0], 4, 2, answer_fn=answer_of, rounds=2)
  (q0,) = result.completions
  assert [c.steps[-1] for c in q0] == ['=1|0.95', '=2|0.3', 'c2|0.6', 'a2|0.5']
  assert [c.finished for c in q0] == [True, True, False, False] and q0[2].answer is None
  assert result.predictions() == ['1']


def test_bad_arguments():
  with pytest.raises(ValueError, match='must divide'):
    beam_search(ScriptedPolicy(BEAM_TREE), ScriptedPRM(), [0], 4, 3, answer_fn=answer_of)
  with pytest.raises(ValueError, match='must be distinct'):
    best_of_n(ScriptedPolicy(BEAM_TREE), ScriptedPRM(), [1, 1], 4, answer_fn=answer_of)


# x looks best after one step but its greedy continuation fails; y looks bad but its continuation succeeds.
LOOKAHEAD_TREE = {0: {
  (): ['x|0.9', 'y|0.2'],
  ('x|0.9',): ['=0|0.1'],
  ('y|0.2',): ['=7|0.95', '=7|0.9'],
}}


def test_lookahead_scores_at_rollout_end_and_discards_it():
  policy, prm = ScriptedPolicy(LOOKAHEAD_TREE), ScriptedPRM()
  result = beam_search(policy, prm, [0], 2, 2, answer_fn=answer_of, lookahead=3)
  # Round 1: sampled steps, then one greedy step each, which finishes both rollouts (so k=3 stops after one).
  assert [g for _, g in policy.calls] == [False, True, False]
  assert policy.calls[2][0] == [(0, ('y|0.2',))] * 2  # y kept on its rollout's 0.95, x dropped on its 0.1
  (q0,) = result.completions
  assert [c.steps for c in q0] == [('y|0.2', '=7|0.95'), ('y|0.2', '=7|0.9')]  # no rollout text in the paths
  assert [c.scores for c in q0] == [(0.2, 0.95), (0.2, 0.9)]
  assert result.predictions() == ['7']
  assert result.generations == 2 * (3 + 1) and result.steps_generated == (6,)
  cut = beam_search(ScriptedPolicy(LOOKAHEAD_TREE), ScriptedPRM(), [0], 2, 2, answer_fn=answer_of, lookahead=1,
                    rounds=1)  # truncated paths come back without their rollouts' steps and scores
  assert [(c.steps, c.scores) for c in cut.completions[0]] == [(('y|0.2',), (0.2,)), (('x|0.9',), (0.9,))]
  plain = beam_search(ScriptedPolicy(LOOKAHEAD_TREE), ScriptedPRM(), [0], 2, 2, answer_fn=answer_of)
  assert plain.predictions() == ['0'] and plain.generations == 2  # k=0 trusts x's first step


DVTS_TREE = {0: {
  (): ['p|0.9', 'q|0.8', 'r|0.3', 's|0.2'],
  ('p|0.9',): ['=1|0.9', '=2|0.5'],
  ('q|0.8',): ['=5|0.9'],
  ('r|0.3',): ['=3|0.6', 'r2|0.7'],
  ('r|0.3', 'r2|0.7'): ['=3|0.8', '=4|0.1'],
}}


def test_dvts_subtrees_are_independent():
  policy = ScriptedPolicy(DVTS_TREE)
  result = dvts(policy, ScriptedPRM(), [0], 4, 2, answer_fn=answer_of)
  rounds = [r for r, _ in policy.calls]
  # Subtree 0 drew (p, q) and keeps p; subtree 1 drew (r, s) and keeps r, although q outscores it.
  assert rounds[1] == [(0, ('p|0.9',))] * 2 + [(0, ('r|0.3',))] * 2
  assert rounds[2] == [(0, ('r|0.3', 'r2|0.7'))] * 2  # subtree 0 stopped at its finished best; subtree 1 goes on
  (q0,) = result.completions
  assert [c.steps for c in q0] == [('p|0.9', '=1|0.9'), ('p|0.9', '=2|0.5'),
                                   ('r|0.3', 'r2|0.7', '=3|0.8'), ('r|0.3', 'r2|0.7', '=4|0.1')]
  assert result.predictions() == ['1'] and result.generations == 4 and result.steps_generated == (10,)
  # Beam search on the same draws keeps the global top two (p, q) and loses r's subtree.
  beam = ScriptedPolicy(DVTS_TREE)
  beam_search(beam, ScriptedPRM(), [0], 4, 2, answer_fn=answer_of)
  assert {steps for _, steps in beam.calls[1][0]} == {('p|0.9',), ('q|0.8',)}


def test_strategies_fit_budgets_and_count_lookahead():
  names = [s.name for s in PAPER_STRATEGIES]
  assert len(set(names)) == len(names)
  assert Strategy('beam', None, 3).fits(16) and Strategy('beam', None, 3).beam_width(16) == 2
  assert Strategy('beam', None, 1).beam_width(16) == 2 and Strategy('beam', None, 1).beam_width(64) == 4  # N = 8, 32
  assert not Strategy('beam', 4, 3).fits(4) and not Strategy('beam', None, 3).fits(6)  # 1 beam; 3 + 1 does not divide 6
  assert all(s.fits(b) for s in PAPER_STRATEGIES for b in (16, 64, 256))
  result = Strategy('beam', 1, 1).run(ScriptedPolicy(LOOKAHEAD_TREE), ScriptedPRM(), [0], 4, answer_fn=answer_of)
  assert result.generations == 4 and len(result.completions[0]) == 2
  with pytest.raises(ValueError, match='does not fit'):
    Strategy('beam', 4, 3).run(ScriptedPolicy(LOOKAHEAD_TREE), ScriptedPRM(), [0], 4, answer_fn=answer_of)


class ChainPolicy:
  """The spec's toy (§10): K steps, each right with probability p while the chain is still right (errors are
  unrecoverable); the last step states 'A' when right, else one of 20 wrong answers. Greedy takes the likelier step."""

  def __init__(self, k, p, seed):
    self.k, self.p, self.rng = k, p, np.random.default_rng(seed)

  def extend(self, requests, *, greedy=False):
    out = []
    for _, steps in requests:
      ok = all(s.startswith('ok') for s in steps) and (self.p > 0.5 if greedy else self.rng.random() < self.p)
      last = len(steps) == self.k - 1
      answer = ('=A' if ok else f'=W{self.rng.integers(20)}') if last else ''
      out.append(Step(('ok' if ok else 'x') + answer, last))
    return out


class ValuePRM:
  """The exact value to go: p^(steps remaining) on a right prefix, 0 on a wrong one (the spec's σ = 0)."""

  def __init__(self, k, p):
    self.k, self.p = k, p

  def score(self, requests):
    return [[self.p ** (self.k - 1 - j) if all(s.startswith('ok') for s in steps[:j + 1]) else 0.0
             for j in range(len(steps))] for _, steps in requests]


def test_search_on_the_spec_toy_matches_its_closed_forms():
  # K=8, p=0.6, N=4, M=4, 400 questions, seed 0. Closed forms with a perfect verifier: best-of-N weighted
  # 1-(1-p^K)^N = 0.066; beam ≈ (1-(1-p)^M)^(K-1) = 0.834 (the spec's simulation: 0.07 and 0.81). Margins: 4 sd.
  k, p, n = 8, 0.6, 4
  questions = range(400)
  bon = best_of_n(ChainPolicy(k, p, 0), ValuePRM(k, p), questions, n, answer_fn=answer_of)
  beam = beam_search(ChainPolicy(k, p, 0), ValuePRM(k, p), questions, n, 4, answer_fn=answer_of)
  tree = dvts(ChainPolicy(k, p, 0), ValuePRM(k, p), questions, n, 4, answer_fn=answer_of)

  def accuracy(result, method='weighted'):
    return np.mean([a == 'A' for a in result.predictions(method)])

  bon_closed, beam_closed = 1 - (1 - p ** k) ** n, (1 - (1 - p) ** 4) ** (k - 1)
  assert abs(accuracy(bon) - bon_closed) < 4 * np.sqrt(bon_closed * (1 - bon_closed) / 400)
  assert abs(accuracy(beam) - beam_closed) < 4 * np.sqrt(beam_closed * (1 - beam_closed) / 400)
  assert abs(accuracy(tree) - beam_closed) < 4 * np.sqrt(beam_closed * (1 - beam_closed) / 400)  # one subtree = beam
  assert accuracy(bon, 'majority') < accuracy(bon)  # the PRM-weighted vote beats majority (a right answer is rare)
  assert bon.policy_calls == beam.policy_calls == k and beam.steps_generated == (n * k,) * 400
