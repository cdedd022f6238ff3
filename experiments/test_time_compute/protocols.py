"""The text-level interface between the search algorithms and the models behind them.

A request is (question index, steps so far): the policy continues it by one step, the verifier scores
each of its steps. Search code never sees tokens or caches; the engine-backed implementations live in
`policy.py`, scripted ones in the tests.

A step's text ends with the step delimiter when one ended it (so ''.join(steps) is the solution text); the step
that ends a solution (EOS) carries no end-of-sequence marker.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol


@dataclasses.dataclass(frozen=True)
class Step:
  text: str
  finished: bool  # EOS reached: the solution ends with this step


class Policy(Protocol):

  def extend(self, requests: Sequence[tuple[int, tuple[str, ...]]], *, greedy: bool = False) -> list[Step]:
    """One new step per request (question index, steps so far); repeated requests draw independently."""


class Verifier(Protocol):

  def score(self, requests: Sequence[tuple[int, tuple[str, ...]]]) -> list[list[float]]:
    """Per-step scores in (0, 1) for each request's steps."""
