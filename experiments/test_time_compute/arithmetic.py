"""The smoke task: multi-step modular arithmetic with one partial result per step (spec §10, "real tiny task").

A problem is a chain of K single digits, e.g. "3+5+8+2=\\n"; its solution adds them left to right modulo 10, one
step per line, each naming the running total, the next digit and the new total, then a final answer line:

  3+5=8\\n  8+8=6\\n  6+2=8\\n  a=8<EOS>

so every step is checkable on its own (`check_steps`) and an error is unrecoverable: a wrong running total stays
wrong (adding the later digits shifts it by the same amount as the right one). Difficulty is the chain length K
(K - 1 addition steps). The delimiter "\\n" is one token; the answer is read from the last line "a=D".

The tokenizer maps each character of CHARS to its index; EOS (also the padding id) follows them.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

from experiments.test_time_compute.protocols import Step

CHARS = '0123456789+=\na'
EOS = len(CHARS)
VOCAB = EOS + 1
DELIMITER = '\n'
_ANSWER = re.compile(r'(?:^|\n)a=(\d)$')


def encode(text: str) -> list[int]:
  """Text -> token ids; a character outside CHARS is a ValueError naming it."""
  try:
    return [CHARS.index(c) for c in text]
  except ValueError:
    bad = next(c for c in text if c not in CHARS)
    raise ValueError(f'arithmetic tokenizer: character {bad!r} is not in {CHARS!r}') from None


def decode(ids: Sequence[int]) -> str:
  """Token ids -> text; EOS and ids past it are dropped."""
  return ''.join(CHARS[i] for i in ids if 0 <= i < EOS)


@dataclasses.dataclass(frozen=True)
class Problem:
  digits: tuple[int, ...]

  @property
  def prompt(self) -> str:
    return '+'.join(map(str, self.digits)) + '=\n'

  @property
  def answer(self) -> str:
    return str(sum(self.digits) % 10)

  @property
  def difficulty(self) -> int:
    """The chain length K."""
    return len(self.digits)

  def steps(self) -> list[str]:
    """The reference solution, step by step (each step ends with the delimiter but the final one)."""
    out, total = [], self.digits[0]
    for d in self.digits[1:]:
      out.append(f'{total}+{d}={(total + d) % 10}\n')
      total = (total + d) % 10
    return out + [f'a={total}']


def make_problems(count: int, *, min_len: int, max_len: int, seed: int) -> list[Problem]:
  """`count` problems with chain lengths uniform in [min_len, max_len] (np.random.default_rng(seed))."""
  if not 2 <= min_len <= max_len:
    raise ValueError(f'chain lengths need 2 <= min_len <= max_len, got {min_len}, {max_len}')
  rng = np.random.default_rng(seed)
  return [Problem(tuple(int(d) for d in rng.integers(0, 10, rng.integers(min_len, max_len + 1))))
          for _ in range(count)]


def answer_fn(solution: str) -> str | None:
  """The final answer of a solution text (its last line "a=D"), None when there is none."""
  m = _ANSWER.search(solution)
  return m.group(1) if m else None


def is_correct(problem: Problem, answer: str | None) -> bool:
  """The exact checker: the answer equals the chain's sum modulo 10."""
  return answer == problem.answer


def check_steps(problem: Problem, steps: Sequence[str]) -> list[bool]:
  """Per step, whether the solution is still right after it (the exact PRM: each line recomputed)."""
  ref, out, ok = problem.steps(), [], True
  for i, step in enumerate(steps):
    ok = ok and i < len(ref) and step.rstrip('\n') == ref[i].rstrip('\n')
    out.append(ok)
  return out


def sft_example(problem: Problem, length: int) -> dict[str, np.ndarray]:
  """One SFT example: tokens int32 [length] (prompt, solution, EOS, then EOS padding) and loss_mask float32 [length]
  (1 where the next token is a solution token or the EOS: the prompt is not trained on)."""
  prompt, solution = encode(problem.prompt), encode(''.join(problem.steps())) + [EOS]
  ids = prompt + solution
  if len(ids) > length:
    raise ValueError(f'problem {problem.prompt!r} needs {len(ids)} tokens, more than data.length={length}')
  tokens = np.full(length, EOS, np.int32)
  tokens[:len(ids)] = ids
  mask = np.zeros(length, np.float32)
  mask[len(prompt) - 1:len(ids) - 1] = 1.0  # position t predicts token t + 1
  return {'tokens': tokens, 'loss_mask': mask}


def max_tokens(max_len: int) -> int:
  """Tokens of the longest prompt + solution + EOS for chains of up to max_len digits."""
  return 2 * max_len + 1 + 6 * (max_len - 1) + 3 + 1


class SimulatedPolicy:
  """Spec §10's toy policy written as this task's text: a `Policy` (protocols.py) whose steps are right with
  probability q while the path is still right, with no model behind it.

  A right path's next addition step is the reference one with probability q, else the same line with one of the 9
  wrong results (uniformly); a wrong path keeps adding the digits to its wrong running total, so it stays wrong (the
  task's errors are unrecoverable); after the last addition comes the answer line `a=<running total>` with EOS. So
  pass@1 is q ** (K - 1) for a chain of K digits. Greedy extension writes the likelier step (the reference one when
  q > 0.5). Draws come from one np.random.default_rng(seed) stream in request order.
  Used where the paper's selection effects need hundreds of questions and budgets up to 32, beyond what the trained
  smoke policy can search in a test's time (tests/experiments/test_time_compute/test_smoke.py).
  """

  def __init__(self, problems: Sequence[Problem], q: float, seed: int = 0):
    if not 0 <= q <= 1:
      raise ValueError(f'SimulatedPolicy: q must be in [0, 1], got {q}')
    self.problems, self.q, self.rng = list(problems), q, np.random.default_rng(seed)

  def extend(self, requests: Sequence[tuple[int, tuple[str, ...]]], *, greedy: bool = False) -> list[Step]:
    out = []
    draws = self.rng.random(len(requests))
    wrong = self.rng.integers(1, 10, len(requests))
    for j, (question, steps) in enumerate(requests):
      problem = self.problems[question]
      total = problem.digits[0] if not steps else int(steps[-1].rstrip('\n')[-1])
      i = len(steps)
      if i >= len(problem.digits) - 1:
        out.append(Step(f'a={total}', True))
        continue
      digit = problem.digits[i + 1]
      result = (total + digit) % 10
      if all(check_steps(problem, steps)) and not (self.q > 0.5 if greedy else draws[j] < self.q):
        result = (result + int(wrong[j])) % 10
      out.append(Step(f'{total}+{digit}={result}\n', False))
    return out
