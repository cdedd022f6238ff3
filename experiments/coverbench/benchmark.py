"""CoverBench as an `mmjax.evals` benchmark: fixed prompts, left truncation, re-prompt, macro-F1.

Metric: macro-F1 (mean of the F1 of the Correct and the Incorrect class, in percent), overall and per
source dataset. A verdict that cannot be parsed, even after the re-prompt, is an invalid third
prediction, wrong for either gold class, and is counted in `unparsed`.
"""
from __future__ import annotations

from collections.abc import Sequence

from experiments.coverbench.data import CoverBenchExample
from experiments.coverbench.prompts import REPROMPT, parse_verdict, render
from mmjax.evals.fitting import truncate_left
from mmjax.evals.metrics import binary_f1, macro_f1
from mmjax.evals.prompt import Prompt, Responder, fits
from mmjax.evals.report import Chart, Scores, Table


def verdict(record: dict) -> bool | None:
  """The verdict of a response record: its response, else its re-prompt answer ('follow_up')."""
  first = parse_verdict(record['response'])
  if first is None and 'follow_up' in record:
    return parse_verdict(record['follow_up'])
  return first


def random_baseline(gold: Sequence[bool]) -> float:
  """Macro-F1 of the expected confusion matrix of a fair coin (about 50 at any class balance)."""
  pos = sum(gold)
  neg = len(gold) - pos
  # Expected counts of a fair coin: TP = pos/2, FN = pos/2, FP = neg/2 (and mirrored for Incorrect).
  f1_pos = 100.0 * pos / (pos + (pos + neg) / 2) if pos else 0.0
  f1_neg = 100.0 * neg / (neg + (pos + neg) / 2) if neg else 0.0
  return (f1_pos + f1_neg) / 2


class CoverBenchBenchmark:
  """CoverBench over `examples` with prompt `style` ('zero_shot' or 'cot').

  The context is cut from its beginning until the prompt fits the responder's window (the number
  of cut characters is stored as 'truncated_chars'). An answer without a verdict gets one
  re-prompt: the same prompt, with the model's own answer followed by REPROMPT as the start of its
  reply.
  """
  name = 'coverbench'

  def __init__(self, examples: Sequence[CoverBenchExample], *, style: str = 'zero_shot'):
    if not examples:
      raise ValueError('CoverBench: no examples')
    render('', '', style)  # validates the style
    self.examples = list(examples)
    self.style = style

  def __len__(self) -> int:
    return len(self.examples)

  def _fitted(self, index: int, responder: Responder, prefix: str = '') -> tuple[Prompt, int]:
    ex = self.examples[index]
    try:
      return truncate_left(lambda ctx: Prompt(render(ctx, ex.claim, self.style), assistant_prefix=prefix),
                           ex.context, lambda p: fits(responder, p))
    except ValueError as e:
      raise ValueError(f'CoverBench example {index}: {e}') from None

  def prompt(self, index: int, responder: Responder) -> tuple[Prompt, dict]:
    prompt, cut = self._fitted(index, responder)
    return prompt, ({'truncated_chars': cut} if cut else {})

  def follow_up(self, index: int, response: str, responder: Responder) -> Prompt | None:
    if parse_verdict(response) is not None:
      return None
    return self._fitted(index, responder, prefix=response.rstrip() + '\n' + REPROMPT)[0]

  def score(self, records: Sequence[dict]) -> Scores:
    if [r['id'] for r in records] != list(range(len(self))):
      raise ValueError(f'CoverBench: expected one record per example, ids 0..{len(self) - 1} in order')
    gold = [ex.label for ex in self.examples]
    pred = [verdict(r) for r in records]
    f1_pos, f1_neg = binary_f1(gold, pred)
    sources: dict[str, list[int]] = {}
    for i, ex in enumerate(self.examples):
      if ex.source:
        sources.setdefault(ex.source, []).append(i)
    per_source = {s: macro_f1([gold[i] for i in ids], [pred[i] for i in ids])
                  for s, ids in sorted(sources.items())}
    summary = {
        'macro_f1': (f1_pos + f1_neg) / 2,
        'per_source': per_source,
        'n': len(gold),
        'unparsed': sum(p is None for p in pred),
        'f1_correct': f1_pos,
        'f1_incorrect': f1_neg,
        'positive_rate': 100.0 * sum(gold) / len(gold),
        'reprompted': sum('follow_up' in r for r in records),
        'truncated': sum('truncated_chars' in r for r in records),
        'baselines': {'random': random_baseline(gold),
                      'always_correct': macro_f1(gold, [True] * len(gold))},
        'prompt': self.style,
    }
    rows = [(s, len(sources[s]), 100.0 * sum(gold[i] for i in sources[s]) / len(sources[s]), f1,
             sum(pred[i] is None for i in sources[s])) for s, f1 in per_source.items()]
    tables = [
        Table('Summary', ('metric', 'value'), [
            ('macro-F1', summary['macro_f1']), ('F1 Correct', f1_pos), ('F1 Incorrect', f1_neg),
            ('random baseline (macro-F1)', summary['baselines']['random']),
            ('always-Correct baseline (macro-F1)', summary['baselines']['always_correct']),
            ('examples', summary['n']), ('positive rate (%)', summary['positive_rate']),
            ('unparsed', summary['unparsed']), ('re-prompted', summary['reprompted']),
            ('contexts truncated', summary['truncated']), ('prompt', self.style)]),
        Table('Per source', ('source', 'examples', 'positive (%)', 'macro-F1', 'unparsed'), rows)]
    chart = Chart('CoverBench macro-F1 per source', per_source or {'all': summary['macro_f1']},
                  'macro-F1', lines={'overall': summary['macro_f1'],
                                     'random': summary['baselines']['random']})
    return Scores(summary, tables, chart)
