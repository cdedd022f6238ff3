"""The official zero-shot prompts (c-box/StructEval `struct_benchmark/data_config/*_v1_{instruct,ppl}.py`).

chat (`*_v1_instruct`, generation): a one-line instruction, then 'Question:', the four lettered options and
'Answer: ' as the user turn; the reply's first option letter is the answer. ppl (`*_v1_ppl`, base models): a header
line, the question and options, then each of the four strings '\\nAnswer: X' scored by perplexity; MMLU's header names
the subject (with the release's double space).
"""
from __future__ import annotations

from experiments.structeval.data import LETTERS, StructItem

PPL_SUFFIX = '\nAnswer: {}'


def _subject(item: StructItem) -> str:
  return item.subject.replace('_', ' ')


def chat_prompt(item: StructItem) -> str:
  """The user turn of the generation prompt."""
  about = f' about {_subject(item)}' if item.subject else ''
  hint = f'There is a single choice question{about}. Answer the question by replying A, B, C or D.'
  options = ''.join(f'\n{k}. {item.options[k]}' for k in LETTERS)
  return f'{hint}\nQuestion: {item.question}{options}\nAnswer: '


def ppl_context(item: StructItem) -> str:
  """The text the four PPL_SUFFIX continuations follow."""
  about = f' about  {_subject(item)}' if item.subject else ''
  options = ''.join(f'\n{k}. {item.options[k]}' for k in LETTERS)
  return f'The following are multiple choice questions (with answers){about}.\n\n{item.question}{options}'
