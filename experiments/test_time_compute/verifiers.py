"""The exact (and noisy exact) process verifier of the arithmetic task (spec §10: "Exact PRM = recompute the line; add
flips for a noisy PRM"; the toy's "PRM = q^remaining + N(0, σ)").

A step is right when `arithmetic.check_steps` says its prefix is still right (each line recomputed). Its score is the
chance that a policy with per-step accuracy q_hat finishes the solution from there, as an ideal value function would
give it, plus noise:

  right prefix:  q_hat ** remaining + N(0, sigma)    (remaining: reference steps left after this one, answer line
                                                      included, so a right final line scores 1 before noise)
  wrong prefix:  low + N(0, sigma)                   (an error is unrecoverable: the true value is 0)
  decoy path:    q_hat ** remaining + decoy_bonus + N(0, sigma)

and with probability `flip` a step's right/wrong verdict is inverted before the value is taken (a label-flip PRM).
Decoys are spec §10's over-optimisation toy ("decoy wrong steps get a +0.1 PRM bonus"): where a path first goes
wrong, that step is a decoy with probability `decoy`, and the verifier then rates the path as if it were right plus
the bonus, at that step and every later one (the answer line too). So a decoy outranks every right path, and the
more candidates a search compares, the likelier it meets one: beam search gets worse with N while best-of-N weighted
gets better (its right answers agree, the decoys' wrong answers scatter), the paper's Fig. 3 trend. The spec's toy
(K = 8, q = 0.7, σ = 0.1, decoy 0.1, bonus 0.1, width 4) reports beam 0.43 -> 0.01 from N = 4 to 256; on this task
with the simulated policy we measured 0.16 -> 0.07 from N = 4 to 64 (README: a round's right candidates share one
text, hence one noisy score).
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
CACHE_SIZE = 1 << 20


def _normal(u: float) -> float:
  """A standard normal deviate from a uniform one (inverse CDF), so that one uniform draw per purpose suffices."""
  return float(statistics.NormalDist().inv_cdf(min(max(u, 1e-12), 1 - 1e-12)))


class ExactVerifier:
  """`Verifier` scoring arithmetic steps by the exact checker, with Gaussian noise `sigma` and verdict flips of
  probability `flip` (see the module docstring for the formula)."""

  def __init__(self, problems: Sequence[arithmetic.Problem], *, q_hat: float, sigma: float = 0.0, flip: float = 0.0,
               low: float = 0.0, decoy: float = 0.0, decoy_bonus: float = 0.1, seed: int = 0):
    if not 0 < q_hat <= 1:
      raise ValueError(f'ExactVerifier: q_hat must be in (0, 1], got {q_hat}')
    if sigma < 0 or not 0 <= flip <= 1 or not 0 <= decoy <= 1:
      raise ValueError(f'ExactVerifier: need sigma >= 0 and flip, decoy in [0, 1], got sigma={sigma}, flip={flip}, '
                       f'decoy={decoy}')
    self.problems, self.q_hat, self.sigma, self.flip = list(problems), q_hat, sigma, flip
    self.low, self.decoy, self.decoy_bonus, self.seed = low, decoy, decoy_bonus, seed
    self._memo: dict[tuple[int, tuple[str, ...]], tuple[float, bool, bool]] = {}

  def _rng(self, question: int, prefix: Sequence[str]) -> np.random.Generator:
    digest = hashlib.blake2b('\x00'.join(prefix).encode(), digest_size=8).digest()
    return np.random.default_rng((self.seed, question, int.from_bytes(digest, 'little')))

  def score(self, requests: Sequence[tuple[int, tuple[str, ...]]]) -> list[list[float]]:
    out = []
    for j, (question, steps) in enumerate(requests):
      if not 0 <= question < len(self.problems):
        raise ValueError(f'request {j} names question {question}; this verifier holds {len(self.problems)}.')
      out.append([self._step(question, tuple(steps[:i + 1]))[0] for i in range(len(steps))])
    return out

  def _step(self, question: int, prefix: tuple[str, ...]) -> tuple[float, bool, bool]:
    """(score, right, decoyed) of the last step of a prefix; memoised, since a search rescores every path's earlier
    steps each round (the memo is dropped at CACHE_SIZE entries)."""
    key = (question, prefix)
    hit = self._memo.get(key)
    if hit is not None:
      return hit
    problem = self.problems[question]
    i = len(prefix) - 1
    was_right, decoyed = self._step(question, prefix[:-1])[1:] if i else (True, False)
    right = arithmetic.check_steps(problem, prefix)[-1]
    u, z, d = self._rng(question, prefix).random(3)  # all drawn always: each knob has its fixed draw
    if was_right and not right:
      decoyed = d < self.decoy  # decided where the path goes wrong, kept from there on
    as_right = self.q_hat ** max(len(problem.steps()) - 1 - i, 0)
    if decoyed:
      value = as_right + self.decoy_bonus
    else:
      value = as_right if right != (u < self.flip) else self.low
    value += self.sigma * _normal(z)
    if len(self._memo) >= CACHE_SIZE:
      self._memo.clear()
    self._memo[key] = out = (float(np.clip(value, EPS, 1 - EPS)), right, decoyed)
    return out
