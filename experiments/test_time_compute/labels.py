"""Math-Shepherd soft labels for PRM training (Snell et al. §3 / Wang et al. 2024).

For every question the policy draws N solutions; for every step i of a solution, M rollouts continue the prefix
steps[:i+1] to the end, and the step's label is the fraction of them whose answer is right. The last step's label is
the solution's own correctness (nothing is left to roll out). Solutions without a parsable answer are dropped;
a rollout without one, or still unfinished after `max_steps` steps, counts as wrong.

Everything is batched through the `Policy` protocol: one `extend` call per round for all open samples, then one per
round for all open rollouts of every question (with `EnginePolicy` the prefixes are read from the samples' KV
cache rows while they stay in its history, else prefilled once and forked M ways).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from experiments.test_time_compute.protocols import Policy
from experiments.test_time_compute.search import AnswerFn


@dataclasses.dataclass(frozen=True)
class Labelled:
  """One kept sample: its question index, its steps and one soft label in [0, 1] per step."""
  question: int
  steps: tuple[str, ...]
  labels: tuple[float, ...]


def complete(policy: Policy, paths: list[tuple[int, tuple[str, ...]]], max_steps: int
              ) -> tuple[list[tuple[str, ...]], list[bool]]:
  """Continues every path (question, steps) until EOS or max_steps steps in all; returns (steps, finished)."""
  steps = [s for _, s in paths]
  finished = [False] * len(paths)
  for _ in range(max_steps):
    open_ = [i for i, (f, s) in enumerate(zip(finished, steps)) if not f and len(s) < max_steps]
    if not open_:
      break
    for i, new in zip(open_, policy.extend([(paths[i][0], steps[i]) for i in open_])):
      steps[i] += (new.text,)
      finished[i] = new.finished
  return steps, finished


def soft_labels(policy: Policy, questions: Sequence[int], *, samples: int, rollouts: int, answer_fn: AnswerFn,
                correct: Callable[[int, str | None], bool], max_steps: int = 40) -> list[Labelled]:
  """Soft-labelled samples of `questions` (N = samples per question, M = rollouts per step), in question order.

  correct(question, answer) -> whether the answer is right.
  """
  if samples < 1 or rollouts < 1:
    raise ValueError(f'soft_labels needs samples >= 1 and rollouts >= 1, got {samples}, {rollouts}')
  drawn, finished = complete(policy, [(q, ()) for q in questions for _ in range(samples)], max_steps)
  owners = [q for q in questions for _ in range(samples)]
  kept = [(q, s) for q, s, f in zip(owners, drawn, finished) if f and answer_fn(''.join(s)) is not None]
  starts = [(k, i) for k, (_, s) in enumerate(kept) for i in range(len(s) - 1) for _ in range(rollouts)]
  ends, done = complete(policy, [(kept[k][0], kept[k][1][:i + 1]) for k, i in starts], max_steps)
  hits: dict[tuple[int, int], int] = {}
  for (k, i), s, f in zip(starts, ends, done):
    hits[k, i] = hits.get((k, i), 0) + int(f and correct(kept[k][0], answer_fn(''.join(s))))
  out = []
  for k, (q, s) in enumerate(kept):
    last = float(correct(q, answer_fn(''.join(s))))
    out.append(Labelled(q, s, tuple(hits[k, i] / rollouts for i in range(len(s) - 1)) + (last,)))
  return out
