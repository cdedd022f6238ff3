"""Difficulty bins, cross-validated strategy selection on hand-made tables, and the FLOPs-matched formula by hand."""
from __future__ import annotations

import numpy as np
import pytest

from experiments.test_time_compute.compute_optimal import (
  PAPER_R,
  best_fixed_strategy,
  difficulty_bins,
  flops_matched,
  inference_flops,
  matched_inference_multiplier,
  mean_verifier_score,
  pass_at_1,
  pretraining_flops,
  select_compute_optimal,
  select_fixed,
  two_folds,
)


def test_bins_from_pass_at_1_and_predicted_scores():
  correct = np.zeros((10, 10), dtype=bool)
  for q in range(10):
    correct[q, :q] = True  # question q is right q times in 10
  metric = pass_at_1(correct)
  assert metric == pytest.approx(np.arange(10) / 10)
  # Cuts at the 20/40/60/80% quantiles: 0.18, 0.36, 0.54, 0.72; the hardest pair goes to bin 5.
  assert difficulty_bins(metric).tolist() == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
  assert difficulty_bins(np.full(7, 0.5)).tolist() == [1] * 7  # on every cut: the easier bin
  scores = np.array([[0.9, 0.7], [0.1, 0.3], [0.5, 0.5]])
  assert mean_verifier_score(scores) == pytest.approx([0.8, 0.2, 0.5])
  assert difficulty_bins(mean_verifier_score(scores), n_bins=3).tolist() == [1, 3, 2]


def test_two_folds_split_each_bin_in_half():
  bins = np.array([1, 1, 1, 2, 2, 2, 2, 3])
  folds = two_folds(bins, seed=0)
  for b, size in ((1, 3), (2, 4), (3, 1)):
    assert sorted(np.bincount(folds[bins == b], minlength=2)) == sorted([size // 2, size - size // 2])
  assert (two_folds(bins, seed=0) == folds).all()


def test_cross_validated_selection_on_a_hand_made_table():
  # 2 strategies x 8 questions x 2 budgets; questions 0-3 are bin 1, 4-7 bin 2; folds alternate 0, 0, 1, 1.
  bins = np.array([1, 1, 1, 1, 2, 2, 2, 2])
  folds = np.array([0, 0, 1, 1, 0, 0, 1, 1])
  acc = np.zeros((2, 8, 2))
  acc[0, :4, 0] = 1  # budget 0: strategy 0 solves bin 1, strategy 1 solves bin 2
  acc[1, 4:, 0] = 1
  acc[0, :2, 1] = 1  # budget 1, bin 1: the folds disagree (0 wins fold 0, 1 wins fold 1); bin 2: a tie
  acc[1, 2:4, 1] = 1
  acc[:, 4:6, 1] = 1
  sel = select_compute_optimal(acc, bins, folds, n_bins=2)
  assert sel.chosen[:, :, 0].tolist() == [[0, 0], [1, 1]]
  # each fold gets the other fold's winner; bin 2's tie goes to the other fold's best over all bins: 1 for fold 0
  # (strategy 1 solves questions 2 and 3 of fold 1), 0 for fold 1 (strategy 0 solves all of fold 0)
  assert sel.chosen[:, :, 1].tolist() == [[1, 0], [1, 0]]
  assert sel.accuracy.tolist() == [1.0, 0.25]  # budget 1, bin 1: both picks fail on their held-out fold
  assert sel.bin_accuracy.tolist() == [[1.0, 0.0], [1.0, 0.5]]
  best, best_acc = best_fixed_strategy(acc)
  assert best.tolist() == [0, 0] and best_acc.tolist() == [0.5, 0.5]
  assert (sel.accuracy[0] > best_acc[0]) and (sel.per_question[:, 1] == [0, 0, 0, 0, 1, 1, 0, 0]).all()
  fixed = select_fixed(acc, folds)  # one strategy per budget and fold, chosen over the other fold's every question
  assert fixed.chosen[0].tolist() == [[0, 1], [0, 0]]  # budget 0 ties 0.5 / 0.5 on both folds: first strategy
  assert fixed.accuracy.tolist() == [0.5, 0.25]  # budget 1: each fold's pick fails the other fold's bin 1
  assert sel.accuracy[0] > fixed.accuracy[0]  # the per-bin choice wins where the bins want different strategies
  with pytest.raises(ValueError, match='8 questions'):
    select_compute_optimal(acc, bins[:7], folds, n_bins=2)


def test_ties_within_a_bin_go_to_the_folds_best_strategy():
  # 3 strategies x 8 questions x 1 budget, one bin per 4 questions; strategy 2 is best over every fold, but in bin 1
  # all three solve everything: the tie goes to 2, not to the first strategy.
  bins, folds = np.array([1, 1, 1, 1, 2, 2, 2, 2]), np.array([0, 1, 0, 1, 0, 1, 0, 1])
  acc = np.zeros((3, 8, 1))
  acc[:, :4] = 1
  acc[2, 4:] = 1
  acc[0, 4] = 1
  sel = select_compute_optimal(acc, bins, folds, n_bins=2)
  assert sel.chosen[:, :, 0].tolist() == [[2, 2], [2, 2]]
  assert sel.accuracy.tolist() == [1.0]
  acc[2, :4] = 0  # now strategy 2 does not tie in bin 1 and loses it
  assert select_compute_optimal(acc, bins, folds, n_bins=2).chosen[0, :, 0].tolist() == [0, 0]


def test_flops_matched_formula_by_hand():
  assert matched_inference_multiplier(14, 0.16) == pytest.approx(14 + 3 * 13 / 0.16)  # 257.75
  assert matched_inference_multiplier(14, 0.79) == pytest.approx(63.367, abs=1e-3)
  assert matched_inference_multiplier(14, 22) == pytest.approx(15.773, abs=1e-3)
  n, d_pre = 1e9, 2e12
  for r in PAPER_R:  # the small model's total compute with the multiplier equals the large model's
    d_inf = r * d_pre
    small = pretraining_flops(n, d_pre) + matched_inference_multiplier(14, r) * inference_flops(n, d_inf)
    large = pretraining_flops(14 * n, d_pre) + inference_flops(14 * n, d_inf)
    assert small == pytest.approx(large, rel=1e-12)
  rows = flops_matched([4, 16, 64, 256], [0.2, 0.3, 0.4, 0.5], 0.35)
  assert [(r.ratio, r.budget, r.small_accuracy) for r in rows] == [(0.16, 256, 0.5), (0.79, 16, 0.3), (22.0, 4, 0.2)]
  assert [r.test_time_wins for r in rows] == [True, False, False]  # R << 1 favours test-time compute
  with pytest.raises(ValueError, match='below every budget'):
    flops_matched([64, 256], [0.4, 0.5], 0.35)
