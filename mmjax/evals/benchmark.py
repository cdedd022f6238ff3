"""The benchmark interface the runner drives."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from mmjax.evals.prompt import Prompt, Responder
from mmjax.evals.report import Scores


class Benchmark(Protocol):
  """A benchmark loaded from its official on-disk format: examples are addressed by their position
  in the data file (the "id" of a response record).

  prompt: the prompt for example `index`, fitted to the responder's window, and the facts to store
    with its response (e.g. {'images': kept image indices}); keys other than 'id', 'response' and
    'follow_up'.
  follow_up: a second prompt when `response` needs one (CoverBench's re-prompt), else None.
  score: scores response records, one per example in id order, each with 'id' and 'response'
    (and 'follow_up' when a follow-up prompt was answered).
  """
  name: str

  def __len__(self) -> int:
    ...

  def prompt(self, index: int, responder: Responder) -> tuple[Prompt, dict]:
    ...

  def follow_up(self, index: int, response: str, responder: Responder) -> Prompt | None:
    ...

  def score(self, records: Sequence[dict]) -> Scores:
    ...
