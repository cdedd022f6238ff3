"""Benchmark metrics, in percent: accuracy, macro averages over groups, binary macro-F1."""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence


def accuracy(correct: Sequence[bool]) -> float:
  """Percent of True entries; raises on an empty sequence (an empty task is a data error)."""
  if not correct:
    raise ValueError('accuracy of an empty set')
  return 100.0 * sum(bool(c) for c in correct) / len(correct)


def group_accuracy(correct: Sequence[bool], groups: Sequence[Hashable]) -> dict:
  """{group: accuracy over its items}, groups in order of first appearance."""
  by_group: dict = {}
  for c, g in zip(correct, groups, strict=True):
    by_group.setdefault(g, []).append(c)
  return {g: accuracy(cs) for g, cs in by_group.items()}


def mean(values: Sequence[float]) -> float:
  """Unweighted mean; raises on an empty sequence."""
  if not values:
    raise ValueError('mean of an empty set')
  return sum(values) / len(values)


def group_mean(values: Mapping[Hashable, float], parent: Mapping[Hashable, Hashable]) -> dict:
  """Unweighted mean of `values` per parent group: {parent[k]: mean of values[k]}."""
  by_parent: dict = {}
  for k, v in values.items():
    by_parent.setdefault(parent[k], []).append(v)
  return {p: mean(vs) for p, vs in by_parent.items()}


def binary_f1(gold: Sequence[bool], pred: Sequence[bool | None]) -> tuple[float, float]:
  """(F1 of the True class, F1 of the False class), in percent.

  pred None is an invalid answer: wrong for both classes (a false negative of the gold class, a
  false positive of neither). A class with no gold and no predicted items scores 0, as
  sklearn's `f1_score(zero_division=0)`.
  """
  if len(gold) != len(pred):
    raise ValueError(f'binary_f1: {len(gold)} gold labels but {len(pred)} predictions')

  def f1(cls: bool) -> float:
    tp = sum(g == cls and p == cls for g, p in zip(gold, pred))
    fp = sum(g != cls and p == cls for g, p in zip(gold, pred))
    fn = sum(g == cls and p != cls for g, p in zip(gold, pred))
    return 100.0 * 2 * tp / (2 * tp + fp + fn) if tp else 0.0

  return f1(True), f1(False)


def macro_f1(gold: Sequence[bool], pred: Sequence[bool | None]) -> float:
  """Mean of the two classes' F1 (see `binary_f1`), in percent."""
  pos, neg = binary_f1(gold, pred)
  return (pos + neg) / 2
