"""The exact (and noisy exact) process verifier of the arithmetic task (spec §10: "Exact PRM = recompute the line; add
flips for a noisy PRM"; the toy's "PRM = q^remaining + N(0, σ)").

A step is right when `arithmetic.check_steps` says its prefix is still right (each line recomputed). Its score is the
chance that a policy with per-step accuracy q_hat finishes the solution from there, as an ideal value function would
give it, plus noise:

  right prefix:  q_hat ** remaining + N(0, sigma)    (remaining: reference steps left after this one, answer line
                                                      included, so a right final line scores 1 before noise)
  wrong prefix:  low + N(0, sigma)                   (an error is unrecoverable: the true value is 0)

and with probability `flip` a step's right/wrong verdict is inverted before the value is taken (a label-flip PRM).
Scores are clipped to [EPS, 1 - EPS]. The noise and flips are drawn from np.random.default_rng((seed, question,
hash of the prefix text)), so scoring the same (question, steps) prefix twice, in any batch and any order, gives the
same score: a search that rescores a path sees one consistent (if wrong) verifier, as it would a trained PRM.

Why: the learned smoke PRM separates right from wrong steps with AUC 0.6-0.8 only (README), too weak a verifier for
the paper's search results; this one has a known, tunable quality, so the search and selection code is tested on the
real trained policy with a verifier of stated strength.
"""
from __future__ import annotations

import hashlib
import statistics
from collections.abc import Sequence

import numpy as np

from experiments.test_time_compute import arithmetic

EPS = 1e-4


def _normal(u: float) -> float:
  """A standard normal deviate from a uniform one (inverse CDF), so that one uniform draw per purpose suffices."""
  return float(statistics.NormalDist().inv_cdf(min(max(u, 1e-12), 1 - 1e-12)))


class ExactVerifier:
  """`Verifier` scoring arithmetic steps by the exact checker, with Gaussian noise `sigma` and verdict flips of
  probability `flip` (see the module docstring for the formula)."""

  def __init__(self, problems: Sequence[arithmetic.Problem], *, q_hat: float, sigma: float = 0.0, flip: float = 0.0,
               low: float = 0.0, seed: int = 0):
    if not 0 < q_hat <= 1:
      raise ValueError(f'ExactVerifier: q_hat must be in (0, 1], got {q_hat}')
    if sigma < 0 or not 0 <= flip <= 1:
      raise ValueError(f'ExactVerifier: need sigma >= 0 and 0 <= flip <= 1, got sigma={sigma}, flip={flip}')
    self.problems, self.q_hat, self.sigma, self.flip = list(problems), q_hat, sigma, flip
    self.low, self.seed = low, seed

  def _rng(self, question: int, prefix: Sequence[str]) -> np.random.Generator:
    digest = hashlib.blake2b('\x00'.join(prefix).encode(), digest_size=8).digest()
    return np.random.default_rng((self.seed, question, int.from_bytes(digest, 'little')))

  def score(self, requests: Sequence[tuple[int, tuple[str, ...]]]) -> list[list[float]]:
    out = []
    for j, (question, steps) in enumerate(requests):
      if not 0 <= question < len(self.problems):
        raise ValueError(f'request {j} names question {question}; this verifier holds {len(self.problems)}.')
      problem = self.problems[question]
      n_ref = len(problem.steps())
      scores = []
      for i, right in enumerate(arithmetic.check_steps(problem, steps)):
        u, z = self._rng(question, steps[:i + 1]).random(2)  # both drawn always: sigma and flip use fixed draws
        if u < self.flip:
          right = not right
        value = (self.q_hat ** max(n_ref - 1 - i, 0) if right else self.low) + self.sigma * _normal(z)
        scores.append(float(np.clip(value, EPS, 1 - EPS)))
      out.append(scores)
    return out
