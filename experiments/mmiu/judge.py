"""The optional LLM judge of MMIU's `evaluate.py`: a language model maps an answer that the option
matcher cannot place to an option letter, or to Z when no option fits.

The official judge is gpt-4o-mini; any text `Responder` can stand in for it
(`MMIUBenchmark.judge_unmatched`). The judge's answer is stored in the response record under
'judge', and `extract_choice` uses it only when the option matcher finds nothing.
"""
from __future__ import annotations

from collections.abc import Mapping

from mmjax.evals.choice import clean_response
from mmjax.evals.prompt import Prompt

_TEMPLATE = (
    'You are an AI assistant who will help me to match an answer with several options of a '
    'single-choice question. You are provided with a question, several options, and an answer, '
    'and you need to find which option is most similar to the answer. If the meaning of all '
    'options are significantly different from the answer, output Z. When the options are mostly '
    'numbers, if the model outputs numbers in the same format, please do not be too precise and '
    'try to match an answer as much as possible. Your should output a single uppercase character '
    'in A, B, C, D (if they are valid options), and Z. \n'
    'Example 1: \n'
    'Question: What is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n'
    'Answer: a cute teddy bear\nYour output: A\n'
    'Example 2: \n'
    'Question: What is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n'
    'Answer: Spider\nYour output: Z\n'
    'Example 3: \n'
    'Question: {question}?\nOptions: {options}\nAnswer: {answer}\nYour output: ')


def judge_prompt(question: str, options: Mapping[str, str], answer: str) -> Prompt:
  """The official matching prompt (text only) for one answer."""
  listed = '\n'.join(f'{k}: {v}' for k, v in options.items())
  return Prompt(_TEMPLATE.format(question=question, options=listed, answer=clean_response(answer)))


def parse_judgement(output: str, options: Mapping[str, str]) -> str | None:
  """The judge's letter when it is one of the options; Z or anything else is None."""
  letter = clean_response(output).upper()
  return letter if letter in options else None

