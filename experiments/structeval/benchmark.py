"""StructEval as an `mmjax.evals` benchmark: the official zero-shot prompts, option extraction and the three views.

A response is the option letter a model picked: the reply of a chat model (style 'chat'), from which the shared
option matcher (`mmjax.evals.choice.match_choice`) takes the first option over A-D, or the letter a PPL scorer returns
(style 'ppl', see ppl.py). A reply that names no option is wrong and counted in `unmatched`.
"""
from __future__ import annotations

from collections.abc import Sequence

from experiments.structeval.data import LEVELS, StructItem
from experiments.structeval.prompts import chat_prompt, ppl_context
from experiments.structeval.views import breakdowns, counts, mastery_views
from mmjax.evals.choice import match_choice
from mmjax.evals.prompt import Prompt, Responder, fits
from mmjax.evals.report import Chart, Scores, Table

STYLES = {'chat': chat_prompt, 'ppl': ppl_context}
RANDOM = 25.0  # a uniform guess among four options


class StructEvalBenchmark:
  """The items of `load_struct` (Struct items, then seeds when they were loaded), asked in `style` ('chat' or
  'ppl')."""
  name = 'structeval'

  def __init__(self, items: Sequence[StructItem], *, style: str = 'chat'):
    if style not in STYLES:
      raise ValueError(f"StructEval: style must be one of {', '.join(STYLES)}, got {style!r}")
    if not items:
      raise ValueError('StructEval: no items')
    self.items = list(items)
    self.style = style

  def __len__(self) -> int:
    return len(self.items)

  def prompt(self, index: int, responder: Responder) -> tuple[Prompt, dict]:
    item = self.items[index]
    prompt = Prompt(STYLES[self.style](item))
    if not fits(responder, prompt):
      raise ValueError(f'StructEval item {index} ({item.id}): the prompt takes {responder.count_tokens(prompt)} '
                       f'tokens, more than the window of {responder.max_context_tokens}')
    return prompt, {}

  def follow_up(self, index: int, response: str, responder: Responder) -> None:
    """StructEval asks once."""
    return None

  def choices(self, records: Sequence[dict]) -> list[str | None]:
    """The option letter of each response record (None when it names none)."""
    if [r['id'] for r in records] != list(range(len(self))):
      raise ValueError(f'StructEval: expected one record per item, ids 0..{len(self) - 1} in order')
    return [match_choice(r['response'], item.options) for item, r in zip(self.items, records)]

  def score(self, records: Sequence[dict]) -> Scores:
    picked = self.choices(records)
    correct = [c == item.answer for item, c in zip(self.items, picked)]
    views = mastery_views(self.items, correct)
    parts = breakdowns(self.items, correct)
    summary = {'accuracy': views['item_accuracy'], **views, **parts, 'n': len(self.items), 'counts': counts(self.items),
               'unmatched': sum(c is None for c in picked), 'random': RANDOM, 'style': self.style}
    return Scores(summary, _tables(summary), _chart(summary))


def _tables(s: dict) -> list[Table]:
  rows = [('item accuracy (official, micro over items)', s['item_accuracy']),
          ('per-seed mean', s['seed_mean']), ('strict mastery (all of a seed\'s items right)', s['strict_mastery'])]
  if 'seed_accuracy' in s:
    rows += [('seed accuracy', s['seed_accuracy']),
             ('strict mastery with the seed', s['strict_mastery_with_seed'] if s['strict_mastery_with_seed'] is not None
              else 'n/a')]
  rows += [('seeds with items', s['seeds']), ('items', s['n']), ('unmatched answers', s['unmatched']),
           ('random baseline', s['random']), ('prompt style', s['style'])]
  datasets = Table('Per dataset', ('dataset', 'micro', 'mean over subjects', 'subjects'),
                   [(d, v['micro'], v['subject_mean'], v['sources']) for d, v in s['per_dataset'].items()])
  sources = Table('Per source (official: per dataset, MMLU per subject)', ('source', 'accuracy'),
                  list(s['per_source'].items()))
  levels = Table('Per Bloom level and kind', ('group', 'accuracy'),
                 list(s['per_level'].items()) + [(f'all {k}', v) for k, v in s['per_kind'].items()])
  return [Table('Summary', ('metric', 'value'), rows), datasets, levels, sources]


def _chart(s: dict) -> Chart:
  values = {'item accuracy': s['item_accuracy'], 'per-seed mean': s['seed_mean'],
            'strict mastery': s['strict_mastery']}
  groups = dict.fromkeys(values, 'view')
  if s.get('strict_mastery_with_seed') is not None:
    values['seed accuracy'], values['strict + seed'] = s['seed_accuracy'], s['strict_mastery_with_seed']
    groups.update({'seed accuracy': 'seed', 'strict + seed': 'view'})
  for level in LEVELS:
    if level in s['per_level']:
      values[level], groups[level] = s['per_level'][level], 'Bloom level'
  for kind, v in s['per_kind'].items():
    values[f'all {kind}'], groups[f'all {kind}'] = v, 'kind'
  return Chart('StructEval accuracy by view, Bloom level and kind', values, 'accuracy (%)', groups=groups,
               lines={'random': RANDOM})
