"""Ranking consistency: do two instantiations of a benchmark rank the same models the same way?

`ranking_consistency` takes each model's score under two instantiations (e.g. Struct items from two generator seeds,
or the original benchmark and its Struct version) and reports Kendall's tau-b and Spearman's rho between the two
score lists. The augmentation baselines the paper compares against make the second instantiation from the first:
`shuffle_options` (a random permutation of the options; the key follows its text), `perturb_words` (typos: two
inner letters of a word swapped) and `paraphrase` (a local LM rewrites each question; any callable from prompts to
texts, e.g. a `mmjax.evals` Responder's respond).
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from experiments.structeval.data import LETTERS, StructItem
from mmjax.evals.prompt import Prompt

PARAPHRASE_PROMPT = ('Rewrite the following question in different words without changing its meaning or its answer. '
                     'Reply with the rewritten question only.\n\nQuestion: {}')
_WORD = re.compile(r'[A-Za-z]{4,}')


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
  """Kendall's tau-b: (concordant - discordant) / sqrt((n0 - n1)(n0 - n2)), n0 = n(n-1)/2 pairs, n1 and n2 the pairs
  tied in x and in y. NaN when either list is constant."""
  if len(x) != len(y):
    raise ValueError(f'kendall_tau_b: {len(x)} and {len(y)} values')
  n = len(x)
  concordant = discordant = tied_x = tied_y = 0
  for i in range(n):
    for j in range(i + 1, n):
      dx, dy = (x[i] > x[j]) - (x[i] < x[j]), (y[i] > y[j]) - (y[i] < y[j])
      tied_x += dx == 0
      tied_y += dy == 0
      concordant += dx * dy > 0
      discordant += dx * dy < 0
  n0 = n * (n - 1) // 2
  denominator = math.sqrt((n0 - tied_x) * (n0 - tied_y))
  return (concordant - discordant) / denominator if denominator else math.nan


def average_ranks(x: Sequence[float]) -> np.ndarray:
  """Ranks 1..n, tied values sharing the mean of their ranks."""
  x = np.asarray(x, np.float64)
  order = np.argsort(x, kind='stable')
  ranks = np.empty(len(x))
  start = 0
  while start < len(x):
    end = start
    while end + 1 < len(x) and x[order[end + 1]] == x[order[start]]:
      end += 1
    ranks[order[start:end + 1]] = (start + end) / 2 + 1
    start = end + 1
  return ranks


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
  """Spearman's rho: Pearson's correlation of the average ranks. NaN when either list is constant."""
  if len(x) != len(y):
    raise ValueError(f'spearman_rho: {len(x)} and {len(y)} values')
  rx, ry = average_ranks(x) - (len(x) + 1) / 2, average_ranks(y) - (len(y) + 1) / 2
  denominator = math.sqrt(float(np.sum(rx * rx) * np.sum(ry * ry)))
  return float(np.sum(rx * ry)) / denominator if denominator else math.nan


def ranking_consistency(first: Mapping[str, float], second: Mapping[str, float]) -> dict:
  """{'kendall_tau_b', 'spearman_rho', 'models'} between two {model: score} maps over the same models."""
  if set(first) != set(second):
    raise ValueError(f'the two instantiations score different models: {sorted(set(first) ^ set(second))}')
  if len(first) < 2:
    raise ValueError('ranking consistency needs at least two models')
  models = sorted(first)
  x, y = [first[m] for m in models], [second[m] for m in models]
  return {'kendall_tau_b': kendall_tau_b(x, y), 'spearman_rho': spearman_rho(x, y), 'models': len(models)}


def shuffle_options(item: StructItem, rng: np.random.Generator) -> StructItem:
  """The item with its option texts in a random order; the answer letter follows the right text."""
  order = rng.permutation(len(LETTERS))
  texts = [item.options[LETTERS[int(i)]] for i in order]
  answer = LETTERS[int(np.flatnonzero(order == LETTERS.index(item.answer))[0])]
  return dataclasses.replace(item, options=dict(zip(LETTERS, texts)), answer=answer)


def _typo(word: str, rng: np.random.Generator) -> str:
  i = int(rng.integers(1, len(word) - 2))  # an inner pair: the first and last letters stay
  return word[:i] + word[i + 1] + word[i] + word[i + 2:]


def perturb_words(item: StructItem, rng: np.random.Generator, rate: float = 0.2) -> StructItem:
  """The item with each word of four or more letters in its question swapped at two inner letters with probability
  `rate` (options and answer unchanged)."""
  question = _WORD.sub(lambda m: _typo(m.group(0), rng) if rng.random() < rate else m.group(0), item.question)
  return dataclasses.replace(item, question=question)


def paraphrase(items: Sequence[StructItem], lm: Callable[[Sequence[Prompt]], Sequence[str]],
               batch_size: int = 16) -> list[StructItem]:
  """The items with their questions rewritten by `lm` (PARAPHRASE_PROMPT); an empty rewrite keeps the original."""
  out = []
  for first in range(0, len(items), batch_size):
    batch = items[first:first + batch_size]
    texts = lm([Prompt(PARAPHRASE_PROMPT.format(item.question)) for item in batch])
    if len(texts) != len(batch):
      raise ValueError(f'paraphrase: the LM returned {len(texts)} texts for {len(batch)} questions')
    out += [dataclasses.replace(item, question=text.strip() or item.question) for item, text in zip(batch, texts)]
  return out


def augment(items: Sequence[StructItem], kind: str, seed: int = 0,
            lm: Callable[[Sequence[Prompt]], Sequence[str]] | None = None) -> list[StructItem]:
  """A second instantiation of `items` by the baseline `kind`: 'shuffle', 'perturb' or 'paraphrase' (needs lm)."""
  rng = np.random.default_rng(seed)
  if kind == 'shuffle':
    return [shuffle_options(item, rng) for item in items]
  if kind == 'perturb':
    return [perturb_words(item, rng) for item in items]
  if kind == 'paraphrase':
    if lm is None:
      raise ValueError("augment: kind 'paraphrase' needs an lm")
    return paraphrase(items, lm)
  raise ValueError(f"augment: kind must be 'shuffle', 'perturb' or 'paraphrase', got {kind!r}")
