"""MATH answer grading: PRM800K's grader (default) or math-verify behind one call, and `\\boxed{}` extraction.

`grade_answer(given, ground_truth)` with grader='prm800k' decides as PRM800K's `grading/grader.py` does:
  1. the mathd-normalised strings match (`math_normalize.normalize_mathd`), or
  2. the PRM800K-normalised strings match (`math_normalize.normalize_answer`), or
  3. element by element (tuples and intervals split on commas, same number of elements, and the same
     opening and closing bracket when the ground truth has several elements):
       - two plain fractions `a/b` must be the same string (an unreduced `2/4` is not `1/2`);
       - an integer and a non-integer never match;
       - otherwise sympy must simplify (ground_truth) - (given) to 0. sympy is not tried when the difference
         has more than 2 distinct letters (after removing `sqrt` and `frac`), `^{`, `^(`, `^k^` or a
         multi-digit exponent.
grader='math_verify' asks the math-verify package instead (both answers read as `\\boxed{}` contents).

sympy and math-verify run in a worker process (`math_checks.py`) that is killed when a call passes its
`timeout_s` (then the answer grades as wrong, as PRM800K's own grader treats errors); the next call starts a
fresh worker. The worker starts on first need (a second or two, outside any call's limit); answers that
normalise to the same string never need it. A POSIX-only design (select on pipes).
parse_expr evaluates its text, so the worker is a time limit, not a sandbox for hostile input.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from typing import Literal, NamedTuple

from mmjax.evals.math_normalize import (
  is_fraction_string,
  is_integer_string,
  normalize_answer,
  normalize_mathd,
  split_tuple,
)

Grader = Literal['prm800k', 'math_verify']
_GRADERS = ('prm800k', 'math_verify')
_WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'math_checks.py')
_log = logging.getLogger(__name__)
_STARTUP_LIMIT_S = 120.0  # importing sympy and math-verify on a loaded machine; not part of any answer's budget
_TOO_HARD = re.compile(r'\^\{|\^\(|\^[0-9]+\^|\^[0-9][0-9]+')
_BOX = re.compile(r'\\(?:boxed|fbox)(?![A-Za-z])')


class _Deadline:
  """A time.monotonic() limit shared by the checks of one grade_answer call."""

  def __init__(self, seconds: float) -> None:
    self.at = time.monotonic() + seconds

  def extend(self, seconds: float) -> None:
    self.at += seconds


class _CheckWorker:
  """One long-lived `math_checks.py` process; a request past its deadline kills it."""

  def __init__(self) -> None:
    self._proc: subprocess.Popen | None = None
    self._owner = os.getpid()
    self._lock = threading.Lock()
    atexit.register(self.close)

  def check(self, check: str, ground_truth: str, given: str, deadline: _Deadline) -> bool:
    """True when the worker answers 'equal' before the deadline; a worker start extends the deadline."""
    with self._lock:
      if self._owner != os.getpid():  # a forked child must not share its parent's pipes
        self._proc, self._owner = None, os.getpid()
      if self._proc is None or self._proc.poll() is not None:
        started = time.monotonic()
        self._start()
        deadline.extend(time.monotonic() - started)
      request = json.dumps([check, ground_truth, given]) + '\n'
      try:
        self._proc.stdin.write(request.encode())
        self._proc.stdin.flush()
      except BrokenPipeError:
        self.close()
        return False
      reply = self._read_line(deadline.at)
      if reply is None:
        self.close()
        _log.warning('%s check of %r against %r gave no answer within its time limit; graded wrong', check, given,
                     ground_truth)
        return False
      return reply == '1'

  def _start(self) -> None:
    self._proc = subprocess.Popen([sys.executable, _WORKER_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL)
    if self._read_line(time.monotonic() + _STARTUP_LIMIT_S) != 'ready':
      self.close()
      raise RuntimeError(f'{_WORKER_SCRIPT}: the grading worker did not start; check that sympy and math-verify '
                         f'import in {sys.executable}')

  def _read_line(self, deadline: float) -> str | None:
    """One reply line, or None when the deadline passes or the worker dies first."""
    fd = self._proc.stdout.fileno()
    data = b''
    while not data.endswith(b'\n'):
      left = deadline - time.monotonic()
      if left <= 0 or not select.select([fd], [], [], left)[0]:
        return None
      chunk = os.read(fd, 4096)
      if not chunk:
        return None
      data += chunk
    return data.decode().strip()

  def close(self) -> None:
    if self._proc is not None and self._owner == os.getpid():
      self._proc.kill()
      self._proc.wait()
      self._proc = None


_WORKER = _CheckWorker()


def _sympy_allowed(diff: str) -> bool:
  letters = {ch for ch in diff.replace('sqrt', '').replace('frac', '') if ch.isalpha()}
  return len(letters) <= 2 and not _TOO_HARD.search(diff)


def _elements_equal(truth: str, given: str, deadline: _Deadline) -> bool:
  if is_fraction_string(truth) and is_fraction_string(given):
    return truth == given
  if is_integer_string(truth) != is_integer_string(given):
    return False
  if not _sympy_allowed(f'({truth})-({given})'):
    return False
  return _WORKER.check('sympy', truth, given, deadline)


def _grade_prm800k(given: str, ground_truth: str, deadline: _Deadline) -> bool:
  if normalize_mathd(ground_truth) == normalize_mathd(given):
    return True
  truth, answer = normalize_answer(ground_truth), normalize_answer(given)
  if truth is None:
    return False
  if truth == answer:
    return True
  if not answer:
    return False
  truth_elems, given_elems = split_tuple(truth), split_tuple(answer)
  if len(truth_elems) > 1 and (truth[0] != answer[0] or truth[-1] != answer[-1]):
    return False  # (1,2) vs [1,2]: an interval's brackets are part of the answer
  if len(truth_elems) != len(given_elems):
    return False
  return all(_elements_equal(t, g, deadline) for t, g in zip(truth_elems, given_elems))


def grade_answer(given: str | None, ground_truth: str | None, *, grader: Grader = 'prm800k',
                 timeout_s: float = 5.0) -> bool:
  """Whether `given` is a correct answer to a MATH problem whose reference answer is `ground_truth`.

  Both are bare answers (the contents of `\\boxed{}`; see `extract_boxed`). `timeout_s` bounds the seconds
  spent in sympy / math-verify for this call (starting the worker is not counted); past it the answer is
  graded wrong.
  """
  if grader not in _GRADERS:
    raise ValueError(f'grader={grader!r}: expected one of {_GRADERS}')
  if given is None:
    return False
  deadline = _Deadline(timeout_s)
  if grader == 'prm800k':
    return _grade_prm800k(given, ground_truth, deadline)
  if ground_truth is None:
    return False
  return _WORKER.check('math_verify', ground_truth, given, deadline)


class Disagreement(NamedTuple):
  """A (given, ground truth) pair the two graders grade differently."""
  given: str
  ground_truth: str
  prm800k: bool
  math_verify: bool


def grader_disagreements(pairs: Iterable[tuple[str, str]], *, timeout_s: float = 5.0) -> list[Disagreement]:
  """Grades each (given, ground_truth) pair with both graders; returns the pairs where they differ, in order."""
  out = []
  for given, truth in pairs:
    ours = grade_answer(given, truth, grader='prm800k', timeout_s=timeout_s)
    theirs = grade_answer(given, truth, grader='math_verify', timeout_s=timeout_s)
    if ours != theirs:
      out.append(Disagreement(given, truth, ours, theirs))
  return out


def _braced(text: str, start: int) -> str | None:
  """The contents of the brace group opening at text[start] == '{'; `\\{` and `\\}` do not count."""
  depth, i = 0, start
  while i < len(text):
    ch = text[i]
    if ch == '\\':
      i += 2
      continue
    if ch == '{':
      depth += 1
    elif ch == '}':
      depth -= 1
      if depth == 0:
        return text[start + 1:i]
    i += 1
  return None


def extract_boxed(text: str) -> str | None:
  """The answer in the last `\\boxed{...}` or `\\fbox{...}` of a solution (nested braces kept), or of a
  `\\boxed 5` (up to the next `$` or line end); None when there is none or the last one is unclosed."""
  found = list(_BOX.finditer(text))
  if not found:
    return None
  start = found[-1].end()
  if text.startswith('{', start):
    return _braced(text, start)
  if text.startswith(' ', start):
    answer = re.split(r'[$\n]', text[start:].lstrip(' '), maxsplit=1)[0].strip()
    return answer or None
  return None
