"""Soft labels against a brute-force enumeration of the rollouts, on the arithmetic task with a scripted policy.

The scripted policy draws a step by the occurrence index o of its request among the identical requests of one call:
even o gives the right step, odd o a wrong one (the running total off by one, or for question 2 a final line
without an answer). Every group of identical requests the labelling makes has an even size (M = 8 rollouts, at
most 2 steps left after a prefix), so the M rollouts of a prefix with r steps left split exactly as the 2^r
right/wrong sequences do, and each label must equal the enumeration's fraction exactly."""
import itertools

import pytest

from experiments.test_time_compute import arithmetic
from experiments.test_time_compute.labels import soft_labels
from experiments.test_time_compute.protocols import Step

PROBLEMS = [arithmetic.Problem((3, 5, 8)), arithmetic.Problem((9, 4)), arithmetic.Problem((1, 2, 7))]
NO_ANSWER = 2  # question whose wrong final line carries no answer (such samples are dropped)


def _total(problem, steps):
  return int(steps[-1].rstrip('\n')[-1]) if steps else problem.digits[0]


def scripted_step(question: int, steps: tuple[str, ...], wrong: bool) -> Step:
  problem = PROBLEMS[question]
  total, j = _total(problem, steps), len(steps) + 1
  if j < len(problem.digits):
    d = problem.digits[j]
    return Step(f'{total}+{d}={(total + d + wrong) % 10}\n', False)
  if wrong and question == NO_ANSWER:
    return Step('a=', True)
  return Step(f'a={(total + wrong) % 10}', True)


class ScriptedPolicy:

  def extend(self, requests, *, greedy=False):
    seen = {}
    out = []
    for q, steps in requests:
      o = seen.get((q, steps), 0)
      seen[q, steps] = o + 1
      out.append(scripted_step(q, tuple(steps), wrong=bool(o % 2)))
    return out


def brute_force(question: int, prefix: tuple[str, ...]) -> float:
  """The fraction of all right/wrong continuations of prefix that reach the right answer."""
  left = len(PROBLEMS[question].digits) - len(prefix)
  hits = []
  for bits in itertools.product((False, True), repeat=left):
    steps = prefix
    for wrong in bits:
      steps += (scripted_step(question, steps, wrong).text,)
    hits.append(arithmetic.is_correct(PROBLEMS[question], arithmetic.answer_fn(''.join(steps))))
  return sum(hits) / len(hits)


def test_soft_labels_equal_brute_force():
  labelled = soft_labels(ScriptedPolicy(), [0, 1, 2], samples=8, rollouts=8, answer_fn=arithmetic.answer_fn,
                         correct=lambda q, a: arithmetic.is_correct(PROBLEMS[q], a))
  per_question = {q: [x for x in labelled if x.question == q] for q in range(3)}
  assert [len(per_question[q]) for q in range(3)] == [8, 8, 4]  # question 2: the half with a wrong last line dropped
  assert all(arithmetic.answer_fn(''.join(x.steps)) is not None for x in labelled)
  nontrivial = set()
  for x in labelled:
    want = tuple(brute_force(x.question, x.steps[:i + 1]) for i in range(len(x.steps)))
    assert x.labels == want, (x.question, x.steps)
    nontrivial |= {v for v in x.labels if 0 < v < 1}
  assert nontrivial == {0.25, 0.5}  # prefixes with one and two steps left were rolled out
  assert any(x.labels[-1] == 1.0 for x in labelled) and any(x.labels[-1] == 0.0 for x in labelled)


def test_soft_labels_reject_bad_counts():
  with pytest.raises(ValueError, match='samples >= 1 and rollouts >= 1'):
    soft_labels(ScriptedPolicy(), [0], samples=4, rollouts=0, answer_fn=arithmetic.answer_fn,
                correct=lambda q, a: True)
