"""MATH answer normalisation, as PRM800K's grader does it (no sympy here).

Two normalisers, applied one after the other by `math_grader.grade_answer`:

- `normalize_mathd`: Hendrycks' MATH `_strip_string` as PRM800K ships it in `grading/math_normalize.py`
  (drop `\\!`, `\\left`/`\\right`, `^\\circ`, `\\$`, `\\%`, units after `\\text{ `, a short `k =` prefix;
  `\\frac12` -> `\\frac{1}{2}`, `\\sqrt3` -> `\\sqrt{3}`, `0.5` and `a/b` -> `\\frac{a}{b}`);
- `normalize_answer`: PRM800K's own `_normalize` in `grading/grader.py` (strip `\\text{}`, `$`, `%`, a
  fixed list of unit words, `^\\circ`; million/billion/trillion -> `*10^k`; ` or `/` and ` -> `,`; floats
  that are whole -> integers; LaTeX -> text with pylatexenc; spaces and braces dropped; lower case).

Both keep PRM800K's quirks on purpose (e.g. a unit word is removed wherever it occurs, so `monday` becomes
`mon`; `\\text{ ` twice leaves the mathd form untouched), because the point is to grade exactly as it does.
"""
from __future__ import annotations

import re

from pylatexenc import latex2text

_WHOLE_TEXT = re.compile(r'^\\text\{(?P<text>.+?)\}$')
_UNITS = ('degree', 'cm', 'centimeter', 'meter', 'mile', 'second', 'minute', 'hour', 'day', 'week', 'month',
          'year', 'foot', 'feet', 'inch', 'yard')
_UNIT_PATTERNS = tuple(re.compile(unit + r'(es)?(s)? *(\^[0-9]+)?') for unit in _UNITS)
_CIRC = re.compile(r'\^ *\\circ')
_THIN_SPACE_COMMA = re.compile(r',\\! *')
_MINUS_SPACE = re.compile(r'- *')
_MIXED_NUMBER = re.compile(r'([0-9]) +([0-9])')
# A thousands separator: a comma between a digit and exactly three digits that end the number.
_THOUSANDS_COMMA = re.compile(r'(\d),(\d\d\d)($|\D)')
# PRM800K's fraction test; its `.` really is "any character" (so `1a/2b` counts as a fraction).
_FRACTION = re.compile(r'^-?[0-9]+.?/0*[1-9][0-9]*.?$')
_BRACKETS = '()[]'
_LATEX_SYMBOLS = (('√', 'sqrt'), ('π', 'pi'), ('∞', 'inf'), ('∪', 'U'), ('·', '*'), ('×', '*'))


class _KeepOriginal(Exception):
  """A mathd rule met input it cannot handle: the (stripped) answer is returned as it is."""


def _unwrap_text(answer: str) -> str:
  m = _WHOLE_TEXT.search(answer)
  return m.group('text') if m else answer


def normalize_mathd(answer: str | None) -> str | None:
  """Hendrycks' MATH normalisation of one answer string; None stays None."""
  if answer is None:
    return None
  answer = _unwrap_text(answer.strip()).strip()
  try:
    return _strip_mathd(answer)
  except _KeepOriginal:
    return answer


def _strip_mathd(s: str) -> str:
  s = s.replace('\n', '').replace('\\!', '').replace('\\\\', '\\')
  s = s.replace('tfrac', 'frac').replace('dfrac', 'frac')
  s = s.replace('\\left', '').replace('\\right', '')
  s = s.replace('^{\\circ}', '').replace('^\\circ', '').replace('\\$', '')
  if '\\text{ ' in s:  # mathd reads `\text{ ` as the start of trailing units; it expects exactly one.
    parts = s.split('\\text{ ')
    if len(parts) != 2:
      raise _KeepOriginal
    s = parts[0]
  s = s.replace('\\%', '')
  s = s.replace(' .', ' 0.').replace('{.', '{0.')
  if not s:
    return s
  if s[0] == '.':
    s = '0' + s
  sides = s.split('=')
  if len(sides) == 2 and len(sides[0]) <= 2:  # `k = 5` -> `5`
    s = sides[1]
  s = _brace_sqrt(s).replace(' ', '')
  s = _brace_fracs(s)
  if s == '0.5':
    s = '\\frac{1}{2}'
  return _slash_to_frac(s)


def _brace_sqrt(s: str) -> str:
  """`\\sqrt3` -> `\\sqrt{3}`: braces the one character after a bare `\\sqrt`."""
  parts = s.split('\\sqrt')
  out = [parts[0]]
  for rest in parts[1:]:
    if not rest:
      raise _KeepOriginal
    out.append('\\sqrt' + rest if rest[0] == '{' else '\\sqrt{' + rest[0] + '}' + rest[1:])
  return ''.join(out)


def _brace_fracs(s: str) -> str:
  """`\\frac12` -> `\\frac{1}{2}`, `\\frac1{72}` -> `\\frac{1}{72}`; a `\\frac` with < 2 characters after
  it leaves the whole string as it was."""
  parts = s.split('\\frac')
  out = [parts[0]]
  for rest in parts[1:]:
    if not rest:
      raise _KeepOriginal
    if rest[0] == '{':
      out.append('\\frac' + rest)
    elif len(rest) < 2:
      return s
    elif rest[1] == '{':
      out.append('\\frac{' + rest[0] + '}' + rest[1:])
    else:
      out.append('\\frac{' + rest[0] + '}{' + rest[1] + '}' + rest[2:])
  return ''.join(out)


def _slash_to_frac(s: str) -> str:
  """`3/4` -> `\\frac{3}{4}` when both sides are integers written canonically."""
  parts = s.split('/')
  if len(parts) != 2:
    return s
  try:
    num, den = int(parts[0]), int(parts[1])
  except ValueError:
    return s
  return f'\\frac{{{num}}}{{{den}}}' if s == f'{num}/{den}' else s


def strip_thousands_commas(s: str) -> str:
  """'1,234,567' -> '1234567'; tuple commas such as '(1,2)' stay."""
  while True:
    stripped = _THOUSANDS_COMMA.sub(r'\1\2\3', s)
    if stripped == s:
      return s
    s = stripped


def _is_whole(x: float) -> bool:
  try:
    return abs(x - int(round(x))) <= 1e-7
  except (OverflowError, ValueError):  # inf, nan
    return False


def _as_float(s: str) -> float | None:
  try:
    return float(s)
  except ValueError:
    return None


def is_integer_string(s: str) -> bool:
  """True when `s` (thousands commas allowed) parses as a float within 1e-7 of an integer."""
  x = _as_float(strip_thousands_commas(s))
  return x is not None and _is_whole(x)


def is_fraction_string(s: str) -> bool:
  """PRM800K's test for a plain `a/b` fraction, whose unreduced forms must match exactly."""
  return bool(_FRACTION.search(s))


def latex_to_text(expr: str) -> str:
  """LaTeX -> plain text that sympy's parser can read (`\\frac{1}{2}` -> `1/2`, `\\sqrt{2}` -> `sqrt2`)."""
  expr = expr.replace('\\tfrac', '\\frac').replace('\\dfrac', '\\frac')
  expr = expr.replace('\\frac', ' \\frac')  # a mixed number `1\frac12` must stay two numbers
  text = latex2text.LatexNodes2Text().latex_to_text(expr)
  for symbol, name in _LATEX_SYMBOLS:
    text = text.replace(symbol, name)
  return text.strip()


def normalize_answer(expr: str | None) -> str | None:
  """PRM800K's answer normalisation (the second, stricter pass of its grader); None stays None."""
  if expr is None:
    return None
  expr = _unwrap_text(expr)
  expr = expr.replace('\\%', '%').replace('\\$', '$').replace('$', '').replace('%', '')
  expr = expr.replace(' or ', ' , ').replace(' and ', ' , ')
  expr = expr.replace('million', '*10^6').replace('billion', '*10^9').replace('trillion', '*10^12')
  for unit in _UNIT_PATTERNS:
    expr = unit.sub('', expr)
  expr = _CIRC.sub('', expr)
  if expr and expr[0] == '{' and expr[-1] == '}':
    expr = expr[1:-1]
  expr = _THIN_SPACE_COMMA.sub('', expr)
  x = _as_float(expr)
  if x is not None and _is_whole(x):
    expr = str(int(round(x)))
  if '\\' in expr:
    try:
      expr = latex_to_text(expr)
    except Exception:  # noqa: BLE001 (pylatexenc failing on odd LaTeX leaves the answer as written)
      pass
  expr = _MINUS_SPACE.sub('-', expr)
  expr = _MIXED_NUMBER.sub(r'\1+\2', expr)  # `7 3/4` -> `7+3/4`
  expr = expr.replace(' ', '').replace('{', '').replace('}', '').lower()
  if is_integer_string(expr):
    expr = str(int(float(expr.replace(',', ''))))
  return expr


def split_tuple(expr: str) -> list[str]:
  """'(1,2)' -> ['1', '2']: the elements of a tuple or interval with no nested brackets; otherwise [expr]."""
  expr = strip_thousands_commas(expr)
  if not expr:
    return []
  inner = expr[1:-1]
  if (len(expr) > 2 and expr[0] in _BRACKETS and expr[-1] in _BRACKETS
      and not any(ch in inner for ch in _BRACKETS)):
    return [elem.strip() for elem in inner.split(',')]
  return [expr]
