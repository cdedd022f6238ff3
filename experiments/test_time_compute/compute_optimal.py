"""Compute-optimal test-time scaling (Snell et al. §5-6): difficulty bins, per-(bin, budget) strategy selection
with two-fold cross-validation, and the FLOPs-matched comparison against a larger model.

The input of the selection is a table acc[s, q, b]: the accuracy of strategy s on question q at budget b (0/1 for
one run, a mean over seeds otherwise). Bin 1 is the easiest fifth of the questions.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

N_BINS = 5
PAPER_R = (0.16, 0.79, 22.0)  # D_inf / D_pre: inference tokens per pretraining token
PAPER_SCALE = 14  # the larger model of the comparison, in multiples of the small one's parameters


def pass_at_1(correct: np.ndarray) -> np.ndarray:
  """[Q, S] bool (S samples per question; the paper draws 2048) -> [Q] oracle pass@1."""
  return np.asarray(correct, dtype=np.float64).mean(axis=1)


def mean_verifier_score(scores: np.ndarray) -> np.ndarray:
  """[Q, S] PRM final-answer scores -> [Q] predicted difficulty (no ground truth needed; its cost is not counted)."""
  return np.asarray(scores, dtype=np.float64).mean(axis=1)


def difficulty_bins(metric: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
  """[Q] per-question pass@1 or mean score (higher = easier) -> [Q] int bins, 1 the easiest, n_bins the hardest.

  Cut at the metric's quantiles (numpy's linear interpolation); a question on a cut goes to the easier bin.
  """
  metric = np.asarray(metric, dtype=np.float64)
  cuts = np.quantile(metric, np.arange(1, n_bins) / n_bins)
  return n_bins - np.searchsorted(cuts, metric, side='right')


def two_folds(bins: np.ndarray, seed: int) -> np.ndarray:
  """[Q] fold 0/1 per question: each bin's questions shuffled (seeded) and dealt alternately to the two folds."""
  bins = np.asarray(bins)
  folds = np.zeros(len(bins), dtype=np.int64)
  rng = np.random.default_rng(seed)
  for b in np.unique(bins):
    members = rng.permutation(np.flatnonzero(bins == b))
    folds[members[1::2]] = 1
  return folds


@dataclasses.dataclass(frozen=True)
class Selection:
  """chosen[bin, fold, b]: strategy index picked on the other fold (bins index 0 = bin 1);
  per_question[q, b]: the held-out accuracy of the strategy picked for q's bin on the fold q is not in;
  accuracy[b] and bin_accuracy[bin, b]: its means over all questions / a bin's questions."""
  chosen: np.ndarray
  per_question: np.ndarray
  accuracy: np.ndarray
  bin_accuracy: np.ndarray


def _fold_choice(acc: np.ndarray, train: np.ndarray, prefer: np.ndarray | None) -> np.ndarray:
  """[B] the strategy with the best mean accuracy over the `train` questions at each budget. Ties go to `prefer`
  ([B]) when it is among the tied, else to the first tied strategy."""
  means = acc[:, train].mean(axis=1)  # [S, B]
  best = means.argmax(axis=0)
  if prefer is not None:
    tied = means[prefer, np.arange(means.shape[1])] == means.max(axis=0)
    best = np.where(tied, prefer, best)
  return best


def select_fixed(acc: np.ndarray, folds: np.ndarray) -> Selection:
  """The best fixed strategy on held-out questions: at each budget, the strategy with the best mean accuracy over one
  fold's questions (every bin) is scored on the other fold, then the folds swap (as `select_compute_optimal`, with one
  bin). The fair baseline of the compute-optimal curve: same folds, same held-out scoring, no per-bin choice."""
  acc = np.asarray(acc, dtype=np.float64)
  bins = np.ones(acc.shape[1], dtype=np.int64)
  return select_compute_optimal(acc, bins, folds, n_bins=1)


def select_compute_optimal(acc: np.ndarray, bins: np.ndarray, folds: np.ndarray, n_bins: int = N_BINS) -> Selection:
  """Per-(bin, budget) argmax of accuracy over strategies with two-fold cross-validation within each bin.

  acc: [S, Q, B]. For each bin and budget the strategy is chosen on one fold and scored on the other, then the folds
  swap; the result per question is its held-out score, so accuracy[b] averages the two folds weighted by size.
  A tie within a bin goes to the strategy that is best over the whole selecting fold (all bins; the fixed strategy
  `select_fixed` picks there), then to the first strategy: on a few questions per bin and fold ties are common (every
  strategy solves the easy bin), and the paper's argmax does not say how to break them. A bin whose fold is empty is
  scored by the choice made on the whole bin.
  """
  acc = np.asarray(acc, dtype=np.float64)
  bins, folds = np.asarray(bins), np.asarray(folds)
  n_strategies, n_questions, n_budgets = acc.shape
  if bins.shape != (n_questions,) or folds.shape != (n_questions,):
    raise ValueError(f'select_compute_optimal: acc has {n_questions} questions but bins {bins.shape}, '
                     f'folds {folds.shape}')
  chosen = np.zeros((n_bins, 2, n_budgets), dtype=np.int64)
  per_question = np.zeros((n_questions, n_budgets))
  for fold in (0, 1):
    overall = _fold_choice(acc, folds != fold, None) if (folds != fold).any() else None
    for b in range(1, n_bins + 1):
      test = (bins == b) & (folds == fold)
      train = (bins == b) & (folds != fold)
      if not train.any():
        train = bins == b
      if not test.any():
        continue
      chosen[b - 1, fold] = _fold_choice(acc, train, overall)
      per_question[test] = acc[chosen[b - 1, fold], :, np.arange(n_budgets)].T[test]
  bin_accuracy = np.array([per_question[bins == b].mean(axis=0) if (bins == b).any() else np.full(n_budgets, np.nan)
                           for b in range(1, n_bins + 1)])
  return Selection(chosen, per_question, per_question.mean(axis=0), bin_accuracy)


def best_fixed_strategy(acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """([B] index of the strategy with the best mean accuracy at each budget, [B] that accuracy): the baseline the
  compute-optimal curve is compared against (chosen with hindsight on all questions, so it favours the baseline)."""
  means = np.asarray(acc, dtype=np.float64).mean(axis=1)
  best = means.argmax(axis=0)
  return best, means[best, np.arange(means.shape[1])]


def pretraining_flops(n_params: float, tokens: float) -> float:
  """X = 6·N·D_pre."""
  return 6.0 * n_params * tokens


def inference_flops(n_params: float, tokens: float) -> float:
  """Y = 2·N·D_inf."""
  return 2.0 * n_params * tokens


def matched_inference_multiplier(scale: float, ratio: float) -> float:
  """How many times its inference compute a model may spend to match, in total FLOPs, a model `scale` times larger
  that is pretrained on the same tokens and serves the same D_inf: M + 3·(D_pre/D_inf)·(M−1), ratio = D_inf/D_pre."""
  if ratio <= 0:
    raise ValueError(f'matched_inference_multiplier: ratio D_inf/D_pre must be positive, got {ratio}')
  return scale + 3.0 * (scale - 1.0) / ratio


@dataclasses.dataclass(frozen=True)
class FlopsMatch:
  """One R of the comparison: the small model's matched budget (generations), the largest evaluated budget within it,
  the small model's accuracy there, and the larger model's greedy accuracy."""
  ratio: float
  multiplier: float
  budget: int
  small_accuracy: float
  large_accuracy: float

  @property
  def test_time_wins(self) -> bool:
    return self.small_accuracy > self.large_accuracy


def flops_matched(budgets: Sequence[int], small_accuracy: Sequence[float], large_accuracy: float, *,
                  scale: float = PAPER_SCALE, ratios: Sequence[float] = PAPER_R) -> list[FlopsMatch]:
  """Test-time compute on the small model against greedy decoding of a `scale`× larger model, per R.

  One greedy answer is one generation, so the small model may spend `matched_inference_multiplier` generations; it is
  credited with its accuracy at the largest evaluated budget that does not exceed them (never more compute than
  matched). A ratio whose matched budget is below every evaluated budget is an error.
  """
  if len(budgets) != len(small_accuracy):
    raise ValueError(f'flops_matched: {len(budgets)} budgets but {len(small_accuracy)} accuracies')
  rows = []
  for r in ratios:
    k = matched_inference_multiplier(scale, r)
    within = [i for i, b in enumerate(budgets) if b <= k]
    if not within:
      raise ValueError(f'flops_matched: R={r} matches {k:.1f} generations, below every budget in {list(budgets)}')
    i = max(within, key=lambda j: budgets[j])
    rows.append(FlopsMatch(r, k, budgets[i], float(small_accuracy[i]), float(large_accuracy)))
  return rows
