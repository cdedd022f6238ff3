"""Sequential revisions (Snell et al. §4): fine-tuning data, revision chains, budget mixes and answer selection.

A revision model answers a question with its previous attempts in context. Its training data puts wrong
attempts before a correct one, the wrong attempt closest to it (character edit distance) last. At inference
N_par chains of N_seq attempts each spend a budget of N_par·N_seq generations; each attempt sees the last 4
before it. The verifier (an ORM with the revision history in context) scores attempt i given the attempts that
were in its context; selection is hierarchical (best-of-N weighted within each chain, then across the chain
winners), majority voting flat over all attempts.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from experiments.test_time_compute.protocols import Verifier
from experiments.test_time_compute.search import majority_vote, weighted_vote

CONTEXT = 4  # attempts kept in the revision model's context


class Reviser(Protocol):

  def revise(self, requests: Sequence[tuple[int, tuple[str, ...]]]) -> list[str]:
    """One new attempt per request (question index, previous attempts oldest first); repeats draw independently."""


def edit_distance(a: str, b: str) -> int:
  """Levenshtein distance in characters (unit insert, delete, substitute).

  Hyyrö's bit-parallel form of Myers' algorithm: one pass over b with len(a)-bit integers, so two
  2,000-character solutions cost milliseconds in Python where the textbook table costs seconds.
  """
  if not a or not b:
    return len(a) + len(b)
  mask, high = (1 << len(a)) - 1, 1 << (len(a) - 1)
  match: dict[str, int] = {}
  for i, ch in enumerate(a):
    match[ch] = match.get(ch, 0) | (1 << i)
  plus, minus, dist = mask, 0, len(a)  # vertical +1 / -1 deltas of the current DP column
  for ch in b:
    eq = match.get(ch, 0)
    xv = eq | minus
    xh = ((((eq & plus) + plus) & mask) ^ plus) | eq
    h_plus = (minus | ~(xh | plus)) & mask
    h_minus = plus & xh
    if h_plus & high:
      dist += 1
    elif h_minus & high:
      dist -= 1
    h_plus = ((h_plus << 1) | 1) & mask  # row 0 grows by one per character of b
    h_minus = (h_minus << 1) & mask
    plus = (h_minus | ~(xv | h_plus)) & mask
    minus = h_plus & xv
  return dist


@dataclasses.dataclass(frozen=True)
class RevisionExample:
  """SFT pair: wrong attempts in context (oldest first) and the correct attempt to learn."""
  question: int
  context: tuple[str, ...]
  target: str


def revision_examples(question: int, attempts: Sequence[str], correct: Sequence[bool | None],
                      rng: np.random.Generator, *, max_context: int = CONTEXT) -> list[RevisionExample]:
  """One example per correct attempt of a question. correct[i] None: no parsable answer, dropped.

  Each correct attempt gets n ~ U{0..max_context} wrong attempts (capped by how many exist): the one closest to it
  by edit distance last, the other n-1 drawn at random without replacement before it.
  """
  if len(attempts) != len(correct):
    raise ValueError(f'revision_examples: {len(attempts)} attempts but {len(correct)} labels')
  wrong = [a for a, c in zip(attempts, correct) if c is False]
  examples = []
  for target in (a for a, c in zip(attempts, correct) if c is True):
    n = min(int(rng.integers(0, max_context + 1)), len(wrong))
    context: tuple[str, ...] = ()
    if n:
      closest = min(range(len(wrong)), key=lambda i: edit_distance(wrong[i], target))
      others = [i for i in range(len(wrong)) if i != closest]
      context = tuple(wrong[i] for i in rng.permutation(others)[:n - 1]) + (wrong[closest],)
    examples.append(RevisionExample(question, context, target))
  return examples


def revision_chains(reviser: Reviser, questions: Sequence[int], n_parallel: int, n_sequential: int, *,
                    context: int = CONTEXT) -> list[list[list[str]]]:
  """chains[i][c][j]: attempt j of chain c for questions[i]; one `revise` call per sequential step for all."""
  chains = [[[] for _ in range(n_parallel)] for _ in questions]
  for _ in range(n_sequential):
    requests = [(q, tuple(chain[-context:]) if context else ()) for q, cs in zip(questions, chains) for chain in cs]
    attempts = reviser.revise(requests)
    if len(attempts) != len(requests):
      raise ValueError(f'Reviser.revise returned {len(attempts)} attempts for {len(requests)} requests')
    flat = iter(attempts)
    for cs in chains:
      for chain in cs:
        chain.append(next(flat))
  return chains


def chain_scores(verifier: Verifier, questions: Sequence[int], chains: Sequence[Sequence[Sequence[str]]], *,
                 context: int = CONTEXT) -> list[list[list[float]]]:
  """Verifier score of each attempt, read after the attempts that were in its context (one `score` call)."""
  requests = [(q, tuple(chain[max(0, j - context):j + 1]))
              for q, cs in zip(questions, chains) for chain in cs for j in range(len(chain))]
  flat = iter(verifier.score(requests))
  return [[[next(flat)[-1] for _ in chain] for chain in cs] for cs in chains]


def hierarchical_select(answers: Sequence[Sequence[str | None]], scores: Sequence[Sequence[float]]) -> str | None:
  """Best-of-N weighted within each chain, then across the chain winners, each weighted by its within-chain sum."""
  winners, weights = [], []
  for chain_answers, chain_scores_ in zip(answers, scores, strict=True):
    winner = weighted_vote(chain_answers, chain_scores_)
    if winner is not None:
      winners.append(winner)
      weights.append(sum(s for a, s in zip(chain_answers, chain_scores_) if a == winner))
  return weighted_vote(winners, weights)


def flat_majority(answers: Sequence[Sequence[str | None]]) -> str | None:
  """Majority vote over every attempt of every chain."""
  return majority_vote([a for chain in answers for a in chain])


def budget_mixes(budget: int) -> list[tuple[int, int]]:
  """Every (n_parallel, n_sequential) with n_parallel·n_sequential = budget, from fully parallel to fully sequential."""
  return [(budget // s, s) for s in range(1, budget + 1) if budget % s == 0]


def take_mix(chains: Sequence[Sequence], n_parallel: int, n_sequential: int) -> list[list]:
  """The first n_parallel chains cut to their first n_sequential attempts: a smaller mix read off a larger run
  (a chain's first attempts do not depend on its later ones)."""
  if n_parallel > len(chains) or any(len(c) < n_sequential for c in chains[:n_parallel]):
    raise ValueError(f'take_mix: a {n_parallel}x{n_sequential} mix does not fit in {len(chains)} chains of '
                     f'{min((len(c) for c in chains), default=0)} attempts')
  return [list(c[:n_sequential]) for c in chains[:n_parallel]]


def correct_to_wrong_rate(correct: Sequence[Sequence[bool]]) -> float:
  """Fraction of correct attempts whose next revision is wrong (the paper reports about 38%)."""
  pairs = [(a, b) for chain in correct for a, b in zip(chain, chain[1:]) if a]
  if not pairs:
    raise ValueError('correct_to_wrong_rate: no correct attempt is followed by a revision')
  return sum(not b for _, b in pairs) / len(pairs)
