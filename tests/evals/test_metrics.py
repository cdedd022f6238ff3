"""Metrics against hand-computed values."""
import pytest

from mmjax.evals import accuracy, binary_f1, group_accuracy, group_mean, macro_f1, mean


def test_macro_f1_hand_computed_confusion_matrix():
  # TP=3, FN=2, FP=1, TN=4: F1+ = 6/9, F1- = 8/11, macro = 69.70
  gold = [True] * 5 + [False] * 5
  pred = [True, True, True, False, False, True, False, False, False, False]
  pos, neg = binary_f1(gold, pred)
  assert pos == pytest.approx(100 * 6 / 9)
  assert neg == pytest.approx(100 * 8 / 11)
  assert macro_f1(gold, pred) == pytest.approx(69.6969, abs=1e-3)


def test_macro_f1_perfect_and_all_true_predictors():
  gold = [True] * 11 + [False] * 9  # 55% positive
  assert macro_f1(gold, gold) == 100.0
  # all True: F1+ = 2*11/(2*11+9) = 22/31, F1- = 0 -> 35.48, not the paper's "0 = majority"
  assert macro_f1(gold, [True] * 20) == pytest.approx(50 * 22 / 31)
  assert macro_f1(gold, [True] * 20) == pytest.approx(35.5, abs=0.05)
  assert macro_f1(gold, [not g for g in gold]) == 0.0


def test_invalid_predictions_are_wrong_for_both_classes():
  gold = [True, True, False, False]
  # None on a True item is a false negative of True only; on a False item, of False only.
  assert binary_f1(gold, [None, True, None, False]) == pytest.approx((100 * 2 / 3, 100 * 2 / 3))
  assert macro_f1(gold, [None] * 4) == 0.0


def test_length_mismatch_raises():
  with pytest.raises(ValueError, match='2 gold labels but 1 predictions'):
    binary_f1([True, False], [True])


def test_accuracy_and_grouped_means():
  assert accuracy([True, False, True, True]) == 75.0
  assert group_accuracy([True, False, True], ['a', 'a', 'b']) == {'a': 50.0, 'b': 100.0}
  assert group_mean({'t1': 50.0, 't2': 100.0, 't3': 0.0}, {'t1': 'r', 't2': 'r', 't3': 's'}) == {
      'r': 75.0, 's': 0.0}
  assert mean([1.0, 2.0]) == 1.5
  with pytest.raises(ValueError):
    accuracy([])
