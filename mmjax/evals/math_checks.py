"""The checks that may never return, run in a worker process that `math_grader` kills at its time limit.

Run as a script (`python math_checks.py`), not imported as part of mmjax, so the worker starts without jax. It
reads one JSON request per line, `[check, ground_truth, given]` with check 'sympy' or 'math_verify', and writes
'1' (equal) or '0' per line; it writes 'ready' once its imports are done. Any error in a check means "not equal",
as in PRM800K's grader.
"""
from __future__ import annotations

import json
import sys

import sympy
from math_verify import parse, verify
from sympy.parsing import sympy_parser

_TRANSFORMS = sympy_parser.standard_transformations + (sympy_parser.implicit_multiplication_application,)


def sympy_equal(ground_truth: str, given: str) -> bool:
  """PRM800K's sympy test: simplify((ground_truth) - (given)) == 0 for normalised element strings.

  parse_expr evaluates the text, which is why the caller screens it first (few letters, no `^{`).
  """
  try:
    diff = sympy_parser.parse_expr(f'({ground_truth})-({given})'.replace('^', '**'), transformations=_TRANSFORMS)
    return bool(sympy.simplify(diff) == 0)
  except Exception:  # noqa: BLE001 (an answer sympy cannot read is not equal, as PRM800K grades it)
    return False


def math_verify_equal(ground_truth: str, given: str) -> bool:
  """math-verify on two bare answers, each read as the content of a `\\boxed{}`; its own signal-based
  timeouts are off because the parent process enforces the limit."""
  try:
    gold = parse(f'\\boxed{{{ground_truth}}}', parsing_timeout=None)
    pred = parse(f'\\boxed{{{given}}}', parsing_timeout=None)
    return bool(verify(gold, pred, timeout_seconds=None))
  except Exception:  # noqa: BLE001 (math-verify failing on an answer grades it wrong)
    return False


_CHECKS = {'sympy': sympy_equal, 'math_verify': math_verify_equal}


def _serve() -> None:
  replies = sys.stdout
  sys.stdout = sys.stderr  # anything a check prints must not corrupt the reply stream
  replies.write('ready\n')
  replies.flush()
  for line in sys.stdin:
    check, ground_truth, given = json.loads(line)
    replies.write('1\n' if _CHECKS[check](ground_truth, given) else '0\n')
    replies.flush()


if __name__ == '__main__':
  _serve()
