"""StructEval's views of a scored item list, in percent.

The paper's definition of "getting a concept right" is not checked (see the spec), so three views are reported:
item accuracy (the official number: micro over items), the per-seed mean (each seed's accuracy over its items, then
the mean over seeds) and strict mastery (the share of seeds whose items are all right; with the seed question too
when the seeds were answered). Only seeds with at least one Struct item count in the per-seed views.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from experiments.structeval.data import LEVELS, StructItem
from mmjax.evals.metrics import accuracy, group_accuracy, mean


def per_seed(items: Sequence[StructItem], correct: Sequence[bool]) -> dict[str, list[bool]]:
  """seed key -> the correctness of its Struct items (seed questions left out), seeds in order of appearance."""
  by_seed: dict[str, list[bool]] = {}
  for item, ok in zip(items, correct, strict=True):
    if item.kind != 'seed':
      by_seed.setdefault(item.seed_key, []).append(bool(ok))
  return by_seed


def mastery_views(items: Sequence[StructItem], correct: Sequence[bool]) -> dict:
  """{'item_accuracy', 'seed_mean', 'strict_mastery', 'seeds'} and, when seed questions are among the items,
  {'seed_accuracy', 'strict_mastery_with_seed', 'seeds_answered'}."""
  by_seed = per_seed(items, correct)
  if not by_seed:
    raise ValueError('StructEval: no Bloom or concept items to score')
  out = {'item_accuracy': accuracy([ok for oks in by_seed.values() for ok in oks]),
         'seed_mean': mean([accuracy(oks) for oks in by_seed.values()]),
         'strict_mastery': accuracy([all(oks) for oks in by_seed.values()]),
         'seeds': len(by_seed)}
  seeds = {item.seed_key: bool(ok) for item, ok in zip(items, correct) if item.kind == 'seed'}
  if seeds:
    out['seed_accuracy'] = accuracy(list(seeds.values()))
    both = [all(by_seed[k]) and seeds[k] for k in by_seed if k in seeds]
    out['strict_mastery_with_seed'] = accuracy(both) if both else None
    out['seeds_answered'] = len(seeds)
  return out


def breakdowns(items: Sequence[StructItem], correct: Sequence[bool]) -> dict:
  """Accuracy per source (official: per dataset, MMLU per subject), per dataset (micro over its items, and the mean
  over its subjects), per Bloom level (in LEVELS order) and per kind (bloom vs concept)."""
  scored = [(item, bool(ok)) for item, ok in zip(items, correct, strict=True) if item.kind != 'seed']
  oks = [ok for _, ok in scored]
  per_source = group_accuracy(oks, [item.source for item, _ in scored])
  per_dataset = {}
  for dataset, acc in group_accuracy(oks, [item.dataset for item, _ in scored]).items():
    subjects = [a for s, a in per_source.items() if s.split('/', 1)[0] == dataset]
    per_dataset[dataset] = {'micro': acc, 'subject_mean': mean(subjects), 'sources': len(subjects)}
  levels = group_accuracy([ok for item, ok in scored if item.kind == 'bloom'],
                          [item.level for item, _ in scored if item.kind == 'bloom'])
  kinds = group_accuracy(oks, [item.kind for item, _ in scored])
  return {'per_source': per_source, 'per_dataset': per_dataset,
          'per_level': {lv: levels[lv] for lv in LEVELS if lv in levels},
          'per_kind': {k: kinds[k] for k in ('bloom', 'concept') if k in kinds}}


def counts(items: Sequence[StructItem]) -> Mapping[str, int]:
  """Items per kind: {'bloom', 'concept', 'seed'}."""
  out = {'bloom': 0, 'concept': 0, 'seed': 0}
  for item in items:
    out[item.kind] += 1
  return out
