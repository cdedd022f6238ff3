"""Test-time search against a PRM (Snell et al. §3): best-of-N, beam search, lookahead and DVTS.

Every algorithm is batched across questions: each round makes one `Policy.extend` call for the paths of
every question still searching (plus one greedy call per lookahead step) and one `Verifier.score` call.
A solution's text is the concatenation of its steps (a step carries its own delimiter, as the policy
generated it); `answer_fn` reads the final answer from it, None when there is none.

Compute is counted in the paper's unit, generations per question: best-of-N, beam search and DVTS cost N,
lookahead k costs N·(k+1). `SearchResult.steps_generated` also counts the policy steps actually drawn.

Choices where the paper is silent (search-and-learn's where it has one):
- a completion without an answer abstains from every vote; a question with no answer at all predicts None;
- vote ties go to the answer seen first, score ties to the path seen first;
- beam search keeps N/M survivors and duplicates them cyclically back to N (survivors 1..N/M, 1..N/M, ...),
  retires finished paths and stops a question as soon as N have finished (search-and-learn #42), the
  best-scored finishers first; after the last round the best unfinished paths fill the N as truncated
  completions;
- DVTS returns, per subtree, the M candidates of its last round (N per question), as search-and-learn does.
"""
from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Literal

from experiments.test_time_compute.protocols import Policy, Verifier

AnswerFn = Callable[[str], str | None]
Aggregation = Literal['last', 'min', 'prod']
Selection = Literal['weighted', 'majority', 'argmax']
MAX_ROUNDS = 40


def aggregate(scores: Sequence[float], how: Aggregation = 'last') -> float:
  """One solution score from its per-step PRM scores: the last step's (the paper's choice), min or product."""
  if not scores:
    raise ValueError('aggregate: a solution with no scored steps')
  if how == 'last':
    return scores[-1]
  if how == 'min':
    return min(scores)
  if how == 'prod':
    return math.prod(scores)
  raise ValueError(f"aggregate: unknown aggregation {how!r}; use 'last', 'min' or 'prod'")


def weighted_vote(answers: Sequence[str | None], weights: Sequence[float]) -> str | None:
  """Best-of-N weighted: the answer whose samples' weights sum highest (None answers abstain)."""
  totals: dict[str, float] = {}
  for answer, weight in zip(answers, weights, strict=True):
    if answer is not None:
      totals[answer] = totals.get(answer, 0.0) + weight
  return max(totals, key=totals.__getitem__) if totals else None


def majority_vote(answers: Sequence[str | None]) -> str | None:
  """The most frequent answer (None answers abstain)."""
  return weighted_vote(answers, [1.0] * len(answers))


def argmax_answer(answers: Sequence[str | None], weights: Sequence[float]) -> str | None:
  """The answer of the single highest-weighted sample that has one."""
  best = None
  for answer, weight in zip(answers, weights, strict=True):
    if answer is not None and (best is None or weight > best[1]):
      best = (answer, weight)
  return best[0] if best else None


@dataclasses.dataclass(frozen=True)
class Completion:
  """One returned solution: its steps, the PRM score of each, whether it reached EOS, its answer."""
  steps: tuple[str, ...]
  scores: tuple[float, ...]
  finished: bool
  answer: str | None


def select(completions: Sequence[Completion], method: Selection = 'weighted', agg: Aggregation = 'last') -> str | None:
  """The predicted answer of one question's completions."""
  answers = [c.answer for c in completions]
  if method == 'majority':
    return majority_vote(answers)
  weights = [aggregate(c.scores, agg) for c in completions]
  if method == 'weighted':
    return weighted_vote(answers, weights)
  if method == 'argmax':
    return argmax_answer(answers, weights)
  raise ValueError(f"select: unknown method {method!r}; use 'weighted', 'majority' or 'argmax'")


@dataclasses.dataclass(frozen=True)
class SearchResult:
  """completions[i]: the N completions of questions[i]; generations: the cost per question (paper's unit);
  steps_generated[i]: policy steps drawn for questions[i], lookahead rollouts included."""
  questions: tuple[int, ...]
  completions: tuple[tuple[Completion, ...], ...]
  generations: int
  steps_generated: tuple[int, ...]
  policy_calls: int
  verifier_calls: int

  def predictions(self, method: Selection = 'weighted', agg: Aggregation = 'last',
                  n: int | None = None) -> list[str | None]:
    """One answer per question from its first n completions (all by default). Best-of-N and DVTS (with n a
    multiple of the width, so that subtrees stay whole) subsample this way; beam search must be rerun."""
    return [select(cs[:n], method, agg) for cs in self.completions]


class _Counted:
  """Counts the calls and the per-question policy steps that pass through a policy and a verifier."""

  def __init__(self, policy: Policy, verifier: Verifier, questions: Sequence[int]):
    if len(set(questions)) != len(questions):
      raise ValueError(f'search: question indices must be distinct, got {list(questions)}')
    self.policy, self.verifier = policy, verifier
    self.policy_calls = self.verifier_calls = 0
    self.steps: collections.Counter = collections.Counter()

  def extend(self, requests: list[tuple[int, tuple[str, ...]]], greedy: bool = False) -> list:
    self.policy_calls += 1
    self.steps.update(q for q, _ in requests)
    steps = self.policy.extend(requests, greedy=greedy)
    if len(steps) != len(requests):
      raise ValueError(f'Policy.extend returned {len(steps)} steps for {len(requests)} requests')
    return steps

  def score(self, requests: list[tuple[int, tuple[str, ...]]]) -> list[list[float]]:
    self.verifier_calls += 1
    scores = self.verifier.score(requests)
    for (_, steps), s in zip(requests, scores, strict=True):
      if len(s) != len(steps):
        raise ValueError(f'Verifier.score returned {len(s)} scores for a request of {len(steps)} steps')
    return scores

  def result(self, questions: Sequence[int], completions: dict, generations: int) -> SearchResult:
    return SearchResult(tuple(questions), tuple(tuple(completions[q]) for q in questions), generations,
                        tuple(self.steps[q] for q in questions), self.policy_calls, self.verifier_calls)


@dataclasses.dataclass(frozen=True)
class _Candidate:
  question: int
  steps: tuple[str, ...]
  scores: tuple[float, ...]  # the PRM scores of `steps` (never of a lookahead rollout)
  finished: bool
  value: float  # the selection score: aggregated over steps + rollout

  def completion(self, answer_fn: AnswerFn) -> Completion:
    return Completion(self.steps, self.scores, self.finished, answer_fn(''.join(self.steps)))


def _expand(io: _Counted, requests: list[tuple[int, tuple[str, ...]]], lookahead: int,
            agg: Aggregation) -> list[_Candidate]:
  """One sampled step per request, then for unfinished ones up to `lookahead` greedy steps (stopping at EOS);
  every path is scored at the end of its rollout and the rollout is discarded."""
  new = io.extend(requests)
  paths = [(q, steps + (s.text,)) for (q, steps), s in zip(requests, new)]
  rollouts = [() for _ in paths]
  open_ = [i for i, s in enumerate(new) if not s.finished]
  for _ in range(lookahead):
    if not open_:
      break
    greedy = io.extend([(paths[i][0], paths[i][1] + rollouts[i]) for i in open_], greedy=True)
    for i, s in zip(open_, greedy):
      rollouts[i] += (s.text,)
    open_ = [i for i, s in zip(open_, greedy) if not s.finished]
  scores = io.score([(q, steps + r) for (q, steps), r in zip(paths, rollouts)])
  return [_Candidate(q, steps, tuple(sc[:len(steps)]), s.finished, aggregate(sc, agg))
          for (q, steps), s, sc in zip(paths, new, scores)]


def _best_first(candidates: list[_Candidate]) -> list[_Candidate]:
  return sorted(candidates, key=lambda c: -c.value)  # stable: ties keep the order of generation


def best_of_n(policy: Policy, verifier: Verifier, questions: Sequence[int], n: int, *, answer_fn: AnswerFn,
              rounds: int = MAX_ROUNDS) -> SearchResult:
  """N independent samples per question, each continued step by step to EOS (or `rounds` steps), scored once."""
  io = _Counted(policy, verifier, questions)
  paths = [(q, ()) for q in questions for _ in range(n)]
  finished = [False] * len(paths)
  for _ in range(rounds):
    open_ = [i for i, f in enumerate(finished) if not f]
    if not open_:
      break
    for i, s in zip(open_, io.extend([paths[i] for i in open_])):
      paths[i] = (paths[i][0], paths[i][1] + (s.text,))
      finished[i] = s.finished
  scores = io.score(paths)
  completions = collections.defaultdict(list)
  for (q, steps), f, sc in zip(paths, finished, scores):
    completions[q].append(Completion(steps, tuple(sc), f, answer_fn(''.join(steps))))
  return io.result(questions, completions, n)


def beam_search(policy: Policy, verifier: Verifier, questions: Sequence[int], n: int, width: int, *,
                answer_fn: AnswerFn, lookahead: int = 0, rounds: int = MAX_ROUNDS,
                agg: Aggregation = 'last') -> SearchResult:
  """N beams of width M: each round expands N paths, keeps the best N/M unfinished ones and duplicates them back
  to N; finished paths retire until N have finished. lookahead=k scores each step after k greedy steps."""
  _check_width(n, width)
  io = _Counted(policy, verifier, questions)
  active = {q: [()] * n for q in questions}
  done: dict[int, list[_Candidate]] = {q: [] for q in questions}
  for r in range(rounds):
    live = [q for q in questions if active[q]]
    if not live:
      break
    by_question = collections.defaultdict(list)
    for c in _expand(io, [(q, p) for q in live for p in active[q]], lookahead, agg):
      by_question[c.question].append(c)
    for q in live:
      ranked = _best_first(by_question[q])
      done[q] += [c for c in ranked if c.finished][:n - len(done[q])]
      open_ = [c for c in ranked if not c.finished]
      if len(done[q]) == n:
        active[q] = []
      elif r == rounds - 1:
        done[q] += open_[:n - len(done[q])]
      else:
        survivors = [c.steps for c in open_[:n // width]]
        active[q] = [survivors[i % len(survivors)] for i in range(n)]
  return io.result(questions, {q: [c.completion(answer_fn) for c in done[q]] for q in questions},
                   n * (lookahead + 1))


def dvts(policy: Policy, verifier: Verifier, questions: Sequence[int], n: int, width: int, *,
         answer_fn: AnswerFn, lookahead: int = 0, rounds: int = MAX_ROUNDS, agg: Aggregation = 'last') -> SearchResult:
  """Diverse verifier tree search: N/M independent subtrees per question; each round a subtree expands its one path
  M ways and keeps the best (stopping when that one is finished). Returns each subtree's last M candidates."""
  _check_width(n, width)
  io = _Counted(policy, verifier, questions)
  trees = [(q, t) for q in questions for t in range(n // width)]
  path = {tree: () for tree in trees}
  last: dict[tuple[int, int], list[_Candidate]] = {}
  live = list(trees)
  for _ in range(rounds):
    if not live:
      break
    candidates = _expand(io, [(q, path[q, t]) for q, t in live for _ in range(width)], lookahead, agg)
    still = []
    for j, tree in enumerate(live):
      last[tree] = candidates[j * width:(j + 1) * width]
      best = _best_first(last[tree])[0]
      path[tree] = best.steps
      if not best.finished:
        still.append(tree)
    live = still
  completions = collections.defaultdict(list)
  for q, t in trees:
    completions[q] += [c.completion(answer_fn) for c in last[q, t]]
  return io.result(questions, completions, n * (lookahead + 1))


def _check_width(n: int, width: int) -> None:
  if width < 1 or n % width:
    raise ValueError(f'beam width {width} must divide the number of beams {n}')


@dataclasses.dataclass(frozen=True)
class Strategy:
  """One search setting of the sweep: at a generation budget B it runs N = B/(k+1) beams. width None means √N, or
  where N is no square (lookahead budgets: 4·(1+1) gives N = 8) the largest divisor of N below √N."""
  kind: Literal['best_of_n', 'beam', 'dvts']
  width: int | None = None
  lookahead: int = 0

  @property
  def name(self) -> str:
    if self.kind == 'best_of_n':
      return 'best_of_n'
    return f"{self.kind}_m{self.width or 'sqrt'}_k{self.lookahead}"

  def beams(self, budget: int) -> int:
    return budget // (self.lookahead + 1)

  def beam_width(self, budget: int) -> int:
    n = self.beams(budget)
    return self.width or max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)

  def fits(self, budget: int) -> bool:
    """Whether the setting runs at this budget: (k+1) divides it and the width divides the beams."""
    n = self.beams(budget)
    if n < 1 or n * (self.lookahead + 1) != budget:
      return False
    return self.kind == 'best_of_n' or n % self.beam_width(budget) == 0

  def run(self, policy: Policy, verifier: Verifier, questions: Sequence[int], budget: int, *, answer_fn: AnswerFn,
          rounds: int = MAX_ROUNDS, agg: Aggregation = 'last') -> SearchResult:
    if not self.fits(budget):
      raise ValueError(f'strategy {self.name} does not fit a budget of {budget} generations')
    n = self.beams(budget)
    if self.kind == 'best_of_n':
      return best_of_n(policy, verifier, questions, n, answer_fn=answer_fn, rounds=rounds)
    search = beam_search if self.kind == 'beam' else dvts
    return search(policy, verifier, questions, n, self.beam_width(budget), answer_fn=answer_fn,
                  lookahead=self.lookahead, rounds=rounds, agg=agg)


# The paper's sweep (§3): best-of-N; beam width √N and 4; lookahead k=3 on both; k=1 on width √N. Plus DVTS.
PAPER_STRATEGIES = (
    Strategy('best_of_n'), Strategy('beam'), Strategy('beam', 4), Strategy('beam', None, 3), Strategy('beam', 4, 3),
    Strategy('beam', None, 1), Strategy('dvts'), Strategy('dvts', 4),
)
