"""Ranking consistency: Kendall tau-b and Spearman rho against scipy (with ties), and the augmentation baselines."""
import math

import numpy as np
import pytest
import scipy.stats

from experiments.structeval.consistency import (
  augment,
  kendall_tau_b,
  paraphrase,
  perturb_words,
  ranking_consistency,
  spearman_rho,
)
from experiments.structeval.data import StructItem

ITEM = StructItem('s/0-bloom-remembering-0', 's', 0, 'bloom', 'Which creature remembers everything quickly?',
                  {'A': 'the owl', 'B': 'the newt', 'C': 'the crow', 'D': 'the yak'}, 'C', 'remembering')


@pytest.mark.parametrize('n, values, seed', [(6, 3, 0), (10, 4, 1), (12, 12, 2), (9, 2, 3)])
def test_tau_b_and_spearman_match_scipy_with_ties(n, values, seed):
  rng = np.random.default_rng(seed)
  x, y = rng.integers(values, size=n).tolist(), rng.integers(values, size=n).tolist()
  assert kendall_tau_b(x, y) == pytest.approx(scipy.stats.kendalltau(x, y, variant='b').statistic, abs=1e-12)
  assert spearman_rho(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)


def test_hand_cases():
  assert kendall_tau_b([1, 2, 3], [1, 2, 3]) == 1.0 and kendall_tau_b([1, 2, 3], [3, 2, 1]) == -1.0
  # x ties one pair: 3 pairs, 1 tied in x; concordant 2 -> 2 / sqrt(2 * 3)
  assert kendall_tau_b([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))
  assert math.isnan(kendall_tau_b([1, 1, 1], [1, 2, 3])) and math.isnan(spearman_rho([2, 2], [1, 2]))


def test_ranking_consistency():
  first = {'m1': 50.0, 'm2': 60.0, 'm3': 70.0, 'm4': 65.0}
  second = {'m1': 40.0, 'm2': 45.0, 'm3': 55.0, 'm4': 58.0}
  out = ranking_consistency(first, second)
  assert out['models'] == 4 and out['kendall_tau_b'] == pytest.approx(4 / 6) and out['spearman_rho'] == 0.8
  with pytest.raises(ValueError, match=r"different models: \['m5'\]"):
    ranking_consistency(first, {**second, 'm5': 1.0})


def test_option_shuffling_keeps_the_key_and_spreads_it():
  items = augment([ITEM] * 400, 'shuffle', seed=0)
  assert all(it.options[it.answer] == 'the crow' and sorted(it.options.values()) == sorted(ITEM.options.values())
             for it in items)
  counts = np.bincount(['ABCD'.index(it.answer) for it in items], minlength=4)
  assert scipy.stats.chisquare(counts).pvalue > 0.001, counts  # roughly uniform over the letters


def test_word_perturbation_swaps_inner_letters_only():
  out = perturb_words(ITEM, np.random.default_rng(0), rate=1.0)
  assert out.options == ITEM.options and out.answer == ITEM.answer and out.question != ITEM.question
  for old, new in zip(ITEM.question.split(), out.question.split()):
    assert sorted(old) == sorted(new) and old[0] == new[0] and old[-1] == new[-1]
    assert (old == new) == (len(old.strip('?')) < 4)
  assert augment([ITEM], 'perturb', seed=3) == augment([ITEM], 'perturb', seed=3)


def test_paraphrase_through_a_scripted_lm():
  seen = []

  def lm(prompts):
    seen.extend(prompts)
    return [p.text.rsplit('Question: ', 1)[1].upper() if i else '  ' for i, p in enumerate(prompts)]

  out = paraphrase([ITEM, ITEM, ITEM], lm, batch_size=2)
  assert [o.question for o in out] == [ITEM.question, ITEM.question.upper(), ITEM.question]  # empty -> original
  assert len(seen) == 3 and all(o.options == ITEM.options and o.answer == 'C' for o in out)
  with pytest.raises(ValueError, match="needs an lm"):
    augment([ITEM], 'paraphrase')
