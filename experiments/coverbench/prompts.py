"""CoverBench's fixed prompts and the verdict parser.

The paper's 0-shot prompt ends 'Answer:'; its chain-of-thought variant keeps the same instruction and
ends "Let's think step-by-step:". When the output names no verdict, the model's own output is
extended with REPROMPT and the model asked once more.
"""
from __future__ import annotations

import re

INSTRUCTION = ("Your task is to check if the Claim is correct according to the Evidence. Generate "
               "'Correct' if the Claim is correct according to the Evidence, or 'Incorrect' if the "
               "claim is incorrect or cannot be verified.")
ENDINGS = {'zero_shot': 'Answer:', 'cot': "Let's think step-by-step:"}
REPROMPT = 'Final answer (correct or incorrect):'

_VERDICT = re.compile(r'\b(not correct|incorrect|correct)\b')
_MARKER = re.compile(r'\b(?:final answer|answer)\b(?: \(correct or incorrect\))?\s*[:\-]?')


def render(context: str, claim: str, style: str) -> str:
  """The prompt text for `style` in ENDINGS."""
  if style not in ENDINGS:
    raise ValueError(f"CoverBench: prompt style must be one of {sorted(ENDINGS)}, got {style!r}")
  return f'{INSTRUCTION}\n\nEvidence: {context}\nClaim: {claim}\n{ENDINGS[style]}'


def parse_verdict(output: str) -> bool | None:
  """True for Correct, False for Incorrect, None when the output does not say.

  Markdown and quotes are ignored and case does not matter; 'incorrect' and 'not correct' are
  never read as 'correct'. In order: the first verdict after the last 'answer:' / 'final answer:';
  else a verdict that opens the output; else the verdict when the output names only one kind.
  """
  text = re.sub(r'[*_`"\']', '', output).lower().strip()
  markers = list(_MARKER.finditer(text))
  if markers:
    m = _VERDICT.search(text, markers[-1].end())
    if m:
      return m.group(1) == 'correct'
  first = _VERDICT.match(text)
  if first:
    return first.group(1) == 'correct'
  kinds = {m.group(1) == 'correct' for m in _VERDICT.finditer(text)}
  return kinds.pop() if len(kinds) == 1 else None
