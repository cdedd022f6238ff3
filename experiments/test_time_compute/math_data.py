"""MATH data in its released layouts: Lightman's MATH500 split, PRM800K's labelled phase files, and CHAMP.

- MATH500 (`prm800k/math_splits/test.jsonl`, HF `MATH-500`): one problem per line with `problem`, `solution`,
  `answer`, `subject`, `level`, `unique_id`.
- PRM800K (`prm800k/data/phase{1,2}_{train,test}.jsonl`): one labelled solution per line; `question` holds the
  problem and its ground truth, `label.steps[]` the rated candidate steps (`completions[]` of `text`, `rating`
  in {-1, 0, 1} or null, `flagged`), the labeller's own step (`human_completion`) and the index of the step
  that continues the solution (`chosen_completion`); `label.finish_reason` says why labelling stopped.
- CHAMP (the `champ-dataset` package): 270 competition problems with answers and reference solutions, and for
  540 model solutions the span of their first wrong step (or none).

Step-labelled solutions from PRM800K and CHAMP share `LabelledSolution`, the PRM data path's input.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
import re
from collections.abc import Iterator

from mmjax.evals.math_grader import extract_boxed
from mmjax.evals.records import read_records

_MATH500_FIELDS = ('problem', 'solution', 'answer', 'subject', 'level', 'unique_id')
_RATINGS = (-1, 0, 1, None)
_ANSWER_MARK = '# Answer'  # PRM800K's solutions end with a step "...\n\n# Answer\n\n<answer>"
_LEVEL = re.compile(r'^(?:Level )?([1-5])$')


@dataclasses.dataclass(frozen=True)
class MathProblem:
  """One MATH500 problem; answer is the `\\boxed{}` content of the reference solution, level 1-5."""
  problem: str
  solution: str
  answer: str
  subject: str
  level: int
  unique_id: str


@dataclasses.dataclass(frozen=True)
class LabelledSolution:
  """A solution split into steps, each with a label: 1 correct, 0 neutral (no progress), -1 wrong.

  steps[i] carries labels[i]; nothing follows a -1 step (the first error ends the labelled part).
  answer is the problem's reference answer; final_answer the answer the solution itself reached, None when it
  reaches none in readable form.
  """
  question: str
  steps: tuple[str, ...]
  labels: tuple[int, ...]
  answer: str
  final_answer: str | None


@dataclasses.dataclass(frozen=True)
class Completion:
  """One candidate step a PRM800K labeller rated; rating is -1, 0, 1, or None when left unrated."""
  text: str
  rating: int | None
  flagged: bool


@dataclasses.dataclass(frozen=True)
class PRM800KStep:
  """One step position: the rated candidates, the index of the chosen one (None when the labeller wrote
  `human` instead, or labelling stopped here)."""
  completions: tuple[Completion, ...]
  chosen: int | None
  human: str | None


@dataclasses.dataclass(frozen=True)
class PRM800KSample:
  """One line of a PRM800K phase file. generation is None in phase 1; pre_generated_answer is set in phase 2."""
  problem: str
  ground_truth_answer: str
  steps: tuple[PRM800KStep, ...]
  finish_reason: str
  generation: int | None
  pre_generated_answer: str | None


def _field(record: dict, name: str, where: str):
  if not isinstance(record, dict) or name not in record:
    raise ValueError(f'{where}: missing field {name!r}')
  return record[name]


def _text(record: dict, name: str, where: str) -> str:
  value = _field(record, name, where)
  if not isinstance(value, str):
    raise ValueError(f'{where}: field {name!r} is a {type(value).__name__}, expected a string')
  return value


def read_math500(path: str) -> list[MathProblem]:
  """The problems of a MATH500-layout JSONL file, in file order."""
  out = []
  for i, record in enumerate(read_records(path)):
    where = f'{path}: line {i + 1}'
    texts = {name: _text(record, name, where) for name in _MATH500_FIELDS if name != 'level'}
    level = _field(record, 'level', where)
    m = _LEVEL.match(str(level))
    if m is None:
      raise ValueError(f'{where}: field \'level\' is {level!r}, expected 1-5 or "Level 1"-"Level 5"')
    out.append(MathProblem(level=int(m.group(1)), **texts))
  return out


def _completion(record: dict, where: str) -> Completion:
  rating = _field(record, 'rating', where)
  if rating not in _RATINGS:
    raise ValueError(f'{where}: field \'rating\' is {rating!r}, expected -1, 0, 1 or null')
  return Completion(_text(record, 'text', where), rating, bool(record.get('flagged')))


def _step(record: dict, where: str) -> PRM800KStep:
  completions = _field(record, 'completions', where)
  if not isinstance(completions, list):
    raise ValueError(f'{where}: field \'completions\' is not a list')
  parsed = tuple(_completion(c, f'{where}.completions[{j}]') for j, c in enumerate(completions))
  chosen = _field(record, 'chosen_completion', where)
  if chosen is not None and not (isinstance(chosen, int) and 0 <= chosen < len(parsed)):
    raise ValueError(f'{where}: chosen_completion {chosen!r} is not an index into its {len(parsed)} completions')
  human = _field(record, 'human_completion', where)
  if isinstance(human, dict):  # phase 1 stores the labeller's step as a completion object
    human = _text(human, 'text', f'{where}.human_completion')
  if human is not None and not isinstance(human, str):
    raise ValueError(f'{where}: field \'human_completion\' is a {type(human).__name__}, expected text or null')
  return PRM800KStep(parsed, chosen, human)


def read_prm800k(path: str) -> list[PRM800KSample]:
  """The labelled solutions of a PRM800K phase file (phase1/phase2, train/test), in file order.

  A Git LFS pointer (the repository cloned without `git lfs pull`) is refused with that fix.
  """
  with open(path, encoding='utf-8') as f:
    if f.read(40).startswith('version https://git-lfs'):
      raise ValueError(f'{path}: a Git LFS pointer, not the data; run `git lfs pull` in the prm800k clone')
  out = []
  for i, record in enumerate(read_records(path)):
    where = f'{path}: line {i + 1}'
    question = _field(record, 'question', where)
    label = _field(record, 'label', where)
    steps = _field(label, 'steps', f'{where}: label')
    if not isinstance(steps, list):
      raise ValueError(f'{where}: field \'label.steps\' is not a list')
    generation = record.get('generation')
    out.append(PRM800KSample(
        problem=_text(question, 'problem', f'{where}: question'),
        ground_truth_answer=_text(question, 'ground_truth_answer', f'{where}: question'),
        steps=tuple(_step(s, f'{where}: label.steps[{j}]') for j, s in enumerate(steps)),
        finish_reason=_text(label, 'finish_reason', f'{where}: label'),
        generation=generation,
        pre_generated_answer=question.get('pre_generated_answer')))
  return out


def answer_after_mark(step: str) -> str | None:
  """The answer of a PRM800K-style final step ('...\\n\\n# Answer\\n\\n42' -> '42'), or None."""
  _, mark, tail = step.rpartition(_ANSWER_MARK)
  if not mark:
    return None
  return tail.strip() or None


def prm800k_trajectory(sample: PRM800KSample) -> LabelledSolution:
  """The solution the labeller walked, as steps and ratings.

  Each step is the chosen completion, else the labeller's own step (rated 1: labellers write one only to
  replace wrong candidates). At a step with no choice (labelling stopped there), the first completion rated -1
  ends the solution (the error found; phase 2 lists the pre-generated step first), or, when none is rated -1,
  the solution ends before that step. An unrated chosen step also ends it.
  """
  steps, labels = [], []
  for step in sample.steps:
    if step.chosen is not None:
      picked = step.completions[step.chosen]
      text, rating = picked.text, picked.rating
    elif step.human is not None:
      text, rating = step.human, 1
    else:
      wrong = [c for c in step.completions if c.rating == -1]
      if wrong:
        steps.append(wrong[0].text)
        labels.append(-1)
      break
    if rating is None:
      break
    steps.append(text)
    labels.append(rating)
    if rating == -1:
      break
  final = answer_after_mark(steps[-1]) if steps else None
  return LabelledSolution(sample.problem, tuple(steps), tuple(labels), sample.ground_truth_answer, final)


def champ_path(version: str = 'v0') -> str:
  """The dataset file the installed `champ-dataset` package ships (dataset_files/<version>.json)."""
  path = os.fspath(importlib.resources.files('champ_dataset') / 'dataset_files' / f'{version}.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no CHAMP dataset file {version!r}; is champ-dataset installed?')
  return path


@dataclasses.dataclass(frozen=True)
class ChampProblem:
  """One CHAMP problem: its text, final answer and the reference solution's steps (all correct)."""
  identifier: str
  category: str
  problem: str
  answer: str
  solution_steps: tuple[str, ...]


def _read_champ(path: str) -> dict:
  with open(path, encoding='utf-8') as f:
    data = json.load(f)
  return _field(data, 'problems', path)


def read_champ(path: str | None = None) -> list[ChampProblem]:
  """CHAMP's problems in file order; `@@` math markers are stripped (their `_text` / `_answer` fields)."""
  path = path or champ_path()
  out = []
  for key, p in _read_champ(path).items():
    where = f'{path}: problem {key}'
    steps = _field(_field(p, 'solution', where), 'steps', where)
    out.append(ChampProblem(key, _text(p, 'category', where), _text(p, '_text', where),
                            _text(p, '_answer', where), tuple(_text(s, '_text', f'{where} step') for s in steps)))
  return out


def _spans(text: str, delimiter: str) -> Iterator[tuple[int, int]]:
  """(start, end) character spans of the non-blank pieces of `text` between delimiters."""
  start = 0
  for piece in text.split(delimiter):
    if piece.strip():
      yield start, start + len(piece)
    start += len(piece) + len(delimiter)


def champ_labelled_solutions(path: str | None = None, delimiter: str = '\n') -> list[tuple[str, LabelledSolution]]:
  """CHAMP's model solutions with first-wrong-step labels, as ('<problem id>|<model>|<prompt>', solution).

  The solution text is split into steps at `delimiter` (blank pieces dropped). Steps that end before the
  annotated first wrong span are labelled 1; the step where it starts is -1 and ends the labelled part; a
  solution annotated 'no mistake' has every step labelled 1. final_answer is its last `\\boxed{}`, if any.
  """
  path = path or champ_path()
  out = []
  for key, p in _read_champ(path).items():
    where = f'{path}: problem {key}'
    question, answer = _text(p, '_text', where), _text(p, '_answer', where)
    for name, note in _field(p, 'fws_annotations', where).items():
      text = _text(note, 'text', f'{where} annotation {name}')
      first_wrong = note.get('start_idx')
      steps, labels = [], []
      for start, end in _spans(text, delimiter):
        wrong = first_wrong is not None and end > first_wrong
        steps.append(text[start:end].strip())
        labels.append(-1 if wrong else 1)
        if wrong:
          break
      out.append((f'{key}|{name}', LabelledSolution(question, tuple(steps), tuple(labels), answer,
                                                    extract_boxed(text))))
  return out
