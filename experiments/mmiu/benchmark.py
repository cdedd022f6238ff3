"""MMIU as an `mmjax.evals` benchmark: the official prompt, the option matcher and the paper's metrics.

Metrics, in percent: a paper task's accuracy pools the items of its data keys; per-relation accuracy
is the unweighted mean of its tasks' accuracies; overall is the unweighted mean over tasks (not
over items, which is reported as `micro`). Items without a gold answer are left out of every count
(as `evaluate_correct.py` does) and counted in `no_gold`. Items whose gold letter is not among the
options stay in (they can only be answered by that letter) and are counted in `gold_not_in_options`.
"""
from __future__ import annotations

import collections
from collections.abc import Sequence

import numpy as np

from experiments.mmiu.data import MMIUExample, resolve_image
from experiments.mmiu.judge import judge_prompt, parse_judgement
from experiments.mmiu.tasks import QUESTION_FIRST, RELATIONS
from mmjax.data import check_images
from mmjax.evals.choice import match_choice
from mmjax.evals.fitting import subsample_images
from mmjax.evals.metrics import accuracy, group_mean, mean
from mmjax.evals.prompt import Prompt, Responder, fits
from mmjax.evals.report import Chart, Scores, Table
from mmjax.models.llava_image_processing import load_rgb

ANSWER_INSTRUCTION = '\nPlease answer the option directly like A,B,C,D...'
# Responses that the official runner writes when it could not ask the model: scored as no answer.
ERROR_RESPONSES = frozenset(('image none', 'image error', 'model error', 'model error or image error'))


def prompt_text(ex: MMIUExample) -> str:
  """The official text (VLMEvalKit/test_qwen3_vl.py): question then context for the 23 listed
  keys, context then question otherwise, then the answer instruction."""
  if ex.key in QUESTION_FIRST:
    body = ex.question + '\n' + ex.context
  else:
    body = ex.context + '\n' + ex.question
  return body + ANSWER_INSTRUCTION


def extract_choice(ex: MMIUExample, record: dict) -> str | None:
  """The option letter of a response record: the option matcher, then the LLM judge's verdict when
  the record holds one ('judge', see judge.py); None when neither names an option."""
  response = record['response']
  if response.strip() in ERROR_RESPONSES:
    return None
  choice = match_choice(response, ex.options)
  if choice is None and 'judge' in record:
    choice = parse_judgement(record['judge'], ex.options)
  return choice


def _frequency_hits(items: list[MMIUExample]) -> float:
  """Accuracy of always answering the task's most frequent gold letter."""
  counts = collections.Counter(ex.gold for ex in items)
  return 100.0 * max(counts.values()) / len(items)


def _random_hits(items: list[MMIUExample]) -> float:
  """Expected accuracy of a uniform guess among each question's options."""
  return 100.0 * mean([1 / len(ex.options) if ex.gold in ex.options else 0.0 for ex in items])


class MMIUBenchmark:
  """MMIU over `examples`; image paths resolve against `image_root`.

  A prompt shows every image, then the text; with `max_images` > 0, or when the responder's window
  is too small, images are subsampled at random (numpy generator seeded by (seed, example index),
  so the choice does not depend on batching or resuming).
  """
  name = 'mmiu'

  def __init__(self, examples: Sequence[MMIUExample], *, image_root: str, seed: int = 0,
               max_images: int = 0):
    if not examples:
      raise ValueError('MMIU: no examples')
    self.examples = list(examples)
    self.image_root = image_root
    self.seed = seed
    self.max_images = max_images

  def __len__(self) -> int:
    return len(self.examples)

  def image_files(self, index: int) -> tuple[str, ...]:
    """The image files of example `index`, in order (see data.resolve_image)."""
    ex = self.examples[index]
    return tuple(resolve_image(p, ex.relation, self.image_root) for p in ex.images)

  def check_images(self) -> None:
    """Decodes every image file as the model responder will (in parallel, with a progress bar) before a model
    loads; raises one ImageReadError naming every missing or undecodable file (the first 20) and their count."""
    check_images([f for i in range(len(self)) for f in self.image_files(i)],
                 what=f'MMIU images under image root {self.image_root!r}', decode=load_rgb)

  def prompt(self, index: int, responder: Responder) -> tuple[Prompt, dict]:
    ex = self.examples[index]
    full = Prompt(prompt_text(ex), self.image_files(index))
    rng = np.random.default_rng((self.seed, index))
    try:
      out, kept = subsample_images(full, lambda p: fits(responder, p), rng, self.max_images)
    except ValueError as e:
      raise ValueError(f'MMIU example {index} ({ex.key}): {e}') from None
    return out, ({} if len(kept) == len(ex.images) else {'kept_images': list(kept)})

  def follow_up(self, index: int, response: str, responder: Responder) -> None:
    """MMIU asks once."""
    return None

  def judge_unmatched(self, records: Sequence[dict], judge: Responder, batch_size: int = 16) -> int:
    """Asks `judge` about each record whose non-empty response the option matcher cannot place
    and that has no 'judge' entry yet; stores its answers in the records. Returns how many."""
    todo = [r for r in records if 'judge' not in r and r['response'].strip()
            and extract_choice(self.examples[r['id']], r) is None
            and r['response'].strip() not in ERROR_RESPONSES]
    for first in range(0, len(todo), batch_size):
      batch = todo[first:first + batch_size]
      prompts = [judge_prompt(self.examples[r['id']].question, self.examples[r['id']].options,
                              r['response']) for r in batch]
      answers = judge.respond(prompts)
      if len(answers) != len(prompts):
        raise ValueError(f'judge returned {len(answers)} answers for {len(prompts)} prompts')
      for r, a in zip(batch, answers):
        r['judge'] = a
    return len(todo)

  def score(self, records: Sequence[dict]) -> Scores:
    if [r['id'] for r in records] != list(range(len(self))):
      raise ValueError(f'MMIU: expected one record per example, ids 0..{len(self) - 1} in order')
    choices = [extract_choice(ex, r) for ex, r in zip(self.examples, records)]
    scored = [(ex, c) for ex, c in zip(self.examples, choices) if ex.gold is not None]
    if not scored:
      raise ValueError('MMIU: no example has a gold answer')
    by_task: dict[str, list] = {}
    by_key: dict[str, list[bool]] = {}
    for ex, c in sorted(scored, key=lambda s: RELATIONS.index(s[0].relation)):
      by_task.setdefault(ex.task, []).append((ex, c == ex.gold))
      by_key.setdefault(ex.key, []).append(c == ex.gold)
    relation = {t: items[0][0].relation for t, items in by_task.items()}
    per_task = {t: accuracy([ok for _, ok in items]) for t, items in by_task.items()}
    per_relation = group_mean(per_task, relation)
    baselines = {}
    for name, fn in (('random', _random_hits), ('frequency', _frequency_hits)):
      task_scores = {t: fn([ex for ex, _ in items]) for t, items in by_task.items()}
      baselines[name] = {'overall': mean(list(task_scores.values())), 'per_task': task_scores,
                         'per_relation': group_mean(task_scores, relation)}
    summary = {
        'overall': mean(list(per_task.values())),
        'per_task': per_task,
        'per_relation': per_relation,
        'n': len(scored),
        'unmatched': sum(c is None for _, c in scored),
        'micro': accuracy([c == ex.gold for ex, c in scored]),
        'gold_not_in_options': sum(ex.gold not in ex.options for ex, _ in scored),
        'no_gold': len(self) - len(scored),
        'per_data_key': {k: accuracy(v) for k, v in by_key.items()},
        'task_sizes': {t: len(items) for t, items in by_task.items()},
        'images_subsampled': sum('kept_images' in r for r in records),
        'baselines': baselines,
    }
    return Scores(summary, self._tables(summary, relation), Chart(
        'MMIU accuracy per task', per_task, 'accuracy (%)', groups=relation,
        lines={'overall': summary['overall'], 'random': baselines['random']['overall'],
               'frequency': baselines['frequency']['overall']}))

  @staticmethod
  def _tables(s: dict, relation: dict[str, str]) -> list[Table]:
    b = s['baselines']
    head = Table('Summary', ('metric', 'value'), [
        ('overall (mean over tasks, %)', s['overall']), ('micro (mean over questions, %)', s['micro']),
        ('random baseline (%)', b['random']['overall']),
        ('frequency baseline (%)', b['frequency']['overall']),
        ('questions scored', s['n']), ('tasks', len(s['per_task'])), ('unmatched answers', s['unmatched']),
        ('gold letter not among options', s['gold_not_in_options']), ('no gold answer', s['no_gold']),
        ('prompts with subsampled images', s['images_subsampled'])])
    tasks_in = collections.Counter(relation.values())
    rel = Table('Per relation (mean over its tasks)',
                ('relation', 'tasks', 'accuracy', 'random', 'frequency'),
                [(r, tasks_in[r], acc, b['random']['per_relation'][r], b['frequency']['per_relation'][r])
                 for r, acc in s['per_relation'].items()])
    task = Table('Per task', ('task', 'relation', 'questions', 'accuracy', 'random', 'frequency'),
                 [(t, relation[t], s['task_sizes'][t], acc, b['random']['per_task'][t],
                   b['frequency']['per_task'][t]) for t, acc in s['per_task'].items()])
    return [head, rel, task]
