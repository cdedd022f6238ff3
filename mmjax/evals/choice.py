"""Multiple-choice answers: option parsing and a deterministic option matcher.

`match_choice` maps a free-form model response to one option letter, or None when it cannot tell
(scored as wrong). It follows MMIU's `evaluate.py` where that script is deterministic (a response
that is a single letter once surrounding `. , ( )` are stripped is that letter) and stands in for its
GPT-4o-mini matching step with fixed rules, in this order:

  1. a bare letter A-N, any case: 'B', '(B)', 'b.', '**B**', '\\boxed{B}';
  2. a list of two or more letters ('A, B', 'A and C', 'B/C') matches nothing;
  3. a leading option letter with a delimiter: 'B. the cat', '(B) the cat', 'B: ...', 'B)', 'B\\n...',
     'B is correct';
  4. an answer phrase: the last 'answer (is|would be|:) B'; else 'option B' / 'choice B' when they all
     name the same letter;
  5. option text: a response equal to one option's text, or containing exactly one option's text as
     whole words (an option whose text lies inside another matched option's text does not count).

Letters in steps 3-4 are upper case and must be option letters; lower-case letters only count in
step 1, where 'a' cannot be the English article.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

_OPTION_LINE = re.compile(r'^\(?([A-Z])[:.)]\s?(.*)$')
_EDGE_PUNCT = re.compile(r'^[\s.,()\[\]\'"]+|[\s.,()\[\]\'"]+$')
_BOXED = re.compile(r'\\boxed\{([^}]*)\}')
_LETTER_LIST = re.compile(
    r'^\(?[A-Z](?![A-Za-z])\)?(?:\s*(?:,|;|/|&|\band\b|\bor\b|\.)?\s*\(?[A-Z](?![A-Za-z])\)?)+$')
_LEADING = re.compile(
    r'^\(([A-Z])\)|^([A-Z])[.:)](?=\s|$)|^([A-Z])(?=\s*\n)'
    r'|^([A-Z])\s+(?=(?:is|would|should|seems|appears)\b)')
_ANSWER = re.compile(
    r'(?i:\banswer\b)\s*(?:(?i:is|would be|should be|will be)\b)?\s*[:=\-]?\s*\(?([A-Z])(?![A-Za-z])')
_OPTION_WORD = re.compile(
    r'(?i:\b(?:option|choice)\b)\s*(?:(?i:is)\b)?\s*[:=]?\s*\(?([A-Z])(?![A-Za-z])')
_SPACES = re.compile(r'\s+')


def parse_options(text: str) -> dict[str, str]:
  """'A: cat\\nB: dog' -> {'A': 'cat', 'B': 'dog'}.

  Lines may start 'A:', 'A.', 'A)' or '(A)'. A line that starts no option continues the previous
  option's text; text before the first option is ignored.
  """
  options: dict[str, str] = {}
  last = None
  for line in text.splitlines():
    m = _OPTION_LINE.match(line.strip())
    if m:
      last = m.group(1)
      options[last] = m.group(2).strip()
    elif last is not None and line.strip():
      options[last] = (options[last] + '\n' + line.strip()).strip()
  return options


def clean_response(response: str) -> str:
  """Strips markdown emphasis, \\boxed{}, no-break spaces and surrounding whitespace/punctuation."""
  text = response.replace('\u00a0', ' ')
  text = _BOXED.sub(r'\1', text)
  text = text.replace('**', '').replace('__', '').replace('`', '')
  return _EDGE_PUNCT.sub('', text)


def _normalise(text: str) -> str:
  return _SPACES.sub(' ', text.lower()).strip(' .,;:!?')


def _match_text(text: str, options: Mapping[str, str]) -> str | None:
  said = _normalise(text)
  texts = {k: _normalise(v) for k, v in options.items() if _normalise(v)}
  exact = [k for k, v in texts.items() if v == said]
  if len(exact) == 1:
    return exact[0]
  found = [k for k, v in texts.items()
           if re.search(r'(?<!\w)' + re.escape(v) + r'(?!\w)', said)]
  outer = [k for k in found if not any(k != j and texts[k] in texts[j] for j in found)]
  return outer[0] if len(outer) == 1 else None


def match_choice(response: str, options: Mapping[str, str]) -> str | None:
  """The option letter `response` picks (see the module docstring), or None.

  options: letter -> option text (from `parse_options`); when empty, letters A-H are accepted.
  """
  text = clean_response(response)
  if not text:
    return None
  if len(text) == 1 and text.lower() in 'abcdefghijklmn':
    return text.upper()
  if _LETTER_LIST.match(text):
    return None
  valid = set(options) or set('ABCDEFGH')
  m = _LEADING.match(text)
  if m:
    letter = next(g for g in m.groups() if g)
    if letter in valid:
      return letter
  answers = [g for g in _ANSWER.findall(text) if g in valid]
  if answers:
    return answers[-1]
  named = {g for g in _OPTION_WORD.findall(text) if g in valid}
  if len(named) == 1:
    return named.pop()
  return _match_text(text, options)
