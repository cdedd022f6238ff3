"""AVSBench metrics against hand-computed values: the empty-mask rule, the eps detail, the F-score's mean curve then
max, the batch dependence of the S4/MS3 numbers, and the AVSS class accounting; torch's linspace and histc where
the port reproduces them."""
import numpy as np
import torch

from experiments.avesformer import metrics

BIG = 20.0  # fp32 sigmoid(20) is exactly 1.0 and sigmoid(-20) = 2e-9: pixels kept at every threshold > 0 / only at 0


def _logits(pred: list) -> np.ndarray:
  return np.where(np.asarray(pred, np.float32) > 0, BIG, -BIG).astype(np.float32)


def _logit_of(p: list) -> np.ndarray:
  p = np.asarray(p, np.float64)
  return np.log(p / (1 - p)).astype(np.float32)


def _f(p: float, r: float) -> float:
  return 0.0 if p == r == 0 else 1.3 * p * r / (0.3 * p + r)


def test_mask_iou_empty_ground_truth_and_eps():
  target = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]]], np.float32)
  pred = _logits([[[1, 0], [1, 0]], [[1, 0], [0, 0]]])
  # frame 1: inter 1, union 3; frame 2 (empty): 3 of 4 pixels predicted background.
  np.testing.assert_allclose(metrics.mask_iou(pred, target), (1 / 3 + 3 / 4) / 2, rtol=1e-6)
  # An empty frame predicted all background scores 1; a logit of exactly 0 (sigmoid 0.5) is background.
  assert metrics.mask_iou(np.zeros((1, 2, 2), np.float32), np.zeros((1, 2, 2), np.float32)) == 1.0
  # union = 1: 1 / (1 + 1e-7) in fp32 is one ulp below 1 (1 + 1e-7 rounds up to 1 + 2^-23).
  one = np.array([[[1, 0], [0, 0]]], np.float32)
  assert metrics.mask_iou(_logits(one), one) == np.float32(1) / (np.float32(1) + np.float32(2.0 ** -23)) < 1


def test_fscore_is_the_max_of_the_mean_curve_and_skips_empty_frames():
  target = np.array([[[1, 1], [0, 0]], [[1, 0], [0, 0]], [[0, 0], [0, 0]]], np.float32)
  probs = [[[0.9, 0.4], [0.6, 0.1]], [[0.3, 0.9], [0.1, 0.1]], [[0.9, 0.9], [0.9, 0.9]]]
  logits = _logit_of(probs)
  # frame 1 alone: thresholds in (0.6, 0.9] keep {0.9}: P = 1, R = 1/2.
  assert abs(metrics.eval_fmeasure(logits[:1], target[:1]) - _f(1, 0.5)) < 1e-6
  # frames 1 + 2 (+ the empty frame 3, skipped): the mean curve peaks on (0.1, 0.3], where frame 1 keeps 3 pixels
  # (P = 2/3, R = 1) and frame 2 keeps 2 (P = 1/2, R = 1) -- not the mean of the per-frame maxima.
  expected = (_f(2 / 3, 1) + _f(0.5, 1)) / 2
  assert abs(metrics.eval_fmeasure(logits[:2], target[:2]) - expected) < 1e-6
  assert abs(metrics.eval_fmeasure(logits, target) - expected) < 1e-6
  assert abs(expected - (_f(1, 0.5) + _f(0.5, 1)) / 2) > 0.04
  assert metrics.eval_fmeasure(logits[2:], target[2:]) == 0.0


def test_the_same_predictions_score_differently_with_other_batches():
  # Three one-frame videos with IoU 1, 0, 0.
  target = np.array([[[[1, 1], [0, 0]]]] * 3, np.float32)
  logits = _logits([[[[1, 1], [0, 0]]], [[[0, 0], [1, 1]]], [[[0, 0], [1, 1]]]])
  by4 = metrics.binary_metrics(logits, target)                  # one batch: (1 + 0 + 0) / 3
  by2 = metrics.binary_metrics(logits, target, batch_size=2)    # (1 + 0) / 2 and 0 -> 1/4
  by2_reordered = metrics.binary_metrics(logits[::-1], target, batch_size=2)   # (0 + 0) / 2 and 1 -> 1/2
  np.testing.assert_allclose([by4['miou'], by2['miou'], by2_reordered['miou']], [1 / 3, 1 / 4, 1 / 2], rtol=1e-6)
  assert (by4['batches'], by2['batches']) == (1, 2)
  # F: above threshold 0 the good frame's curve is 1 and the bad one's 0; at 0 both keep every pixel: f(1/2, 1).
  # Together the mean curve peaks at f(1/2, 1); batches of 1 average the per-frame maxima 1 and f(1/2, 1).
  low = _f(0.5, 1)
  assert abs(metrics.binary_metrics(logits[:2], target[:2], batch_size=2)['fscore'] - low) < 1e-6
  assert abs(metrics.binary_metrics(logits[:2], target[:2], batch_size=1)['fscore'] - (1 + low) / 2) < 1e-6


def test_binary_meter_takes_video_batches():
  target = np.array([[[[1, 1], [0, 0]], [[0, 0], [0, 0]]]], np.float32)   # 1 video x 2 frames
  meter = metrics.BinaryMetrics()
  miou, _ = meter.add(_logits(target), target)
  assert miou == 1.0 and meter.result()['miou'] == 1.0


def _one_hot_logits(pred: np.ndarray, num_classes: int) -> np.ndarray:
  return (10.0 * np.eye(num_classes, dtype=np.float32)[pred]).astype(np.float32)


FRAME_LABELS = np.array([[[0, 1], [1, 2]], [[0, 0], [0, 0]]])
FRAME_PREDS = np.array([[[0, 1], [2, 2]], [[0, 0], [0, 1]]])


def test_avss_class_accounting():
  m = metrics.SemanticMetrics(num_classes=3)
  m.add(_one_hot_logits(FRAME_PREDS, 3), FRAME_LABELS)
  # frame 1: class 0 IoU 1/1, class 1 1/2 (R = 1/2), class 2 1/2 (P = 1/2); frame 2: class 0 3/4 (R = 3/4),
  # class 1 predicted on background: union 1, IoU 0, counted; class 2 absent: not counted.
  np.testing.assert_array_equal(m.cls_count, [2, 2, 1])
  iou, f = m.per_class()
  np.testing.assert_allclose(iou, [(1 + 0.75) / 2, 0.5 / 2, 0.5], rtol=1e-6)
  np.testing.assert_allclose(f, [(1 + _f(1, 0.75)) / 2, _f(1, 0.5) / 2, _f(0.5, 1)], rtol=1e-6)
  r = m.result()
  np.testing.assert_allclose([r['miou'], r['miou_noBg'], r['miou_no_background']],
                             [iou.mean(), (iou[0] + iou[1]) / 2, (iou[1] + iou[2]) / 2], rtol=1e-6)
  assert r['classes'] == 3
  # A class never seen averages in as 0 (mIoU over all C classes).
  wide = metrics.SemanticMetrics(num_classes=4)
  wide.add(_one_hot_logits(FRAME_PREDS, 4), FRAME_LABELS)
  np.testing.assert_allclose(wide.result()['miou'], iou.sum() / 4, rtol=1e-6)


def test_avss_is_batch_independent_and_padding_counts_unless_masked():
  one = metrics.SemanticMetrics(num_classes=3)
  one.add(_one_hot_logits(FRAME_PREDS, 3), FRAME_LABELS)
  split = metrics.SemanticMetrics(num_classes=3)
  split.add(_one_hot_logits(FRAME_PREDS[:1], 3), FRAME_LABELS[:1])
  split.add(_one_hot_logits(FRAME_PREDS[1:], 3), FRAME_LABELS[1:])
  assert one.result() == split.result()
  pad = np.zeros((1, 2, 2), int)
  masked = metrics.SemanticMetrics(num_classes=3)
  masked.add(_one_hot_logits(np.concatenate([FRAME_PREDS, pad]), 3), np.concatenate([FRAME_LABELS, pad]),
             frame_mask=np.array([1, 1, 0]))
  assert masked.result() == one.result()
  counted = metrics.SemanticMetrics(num_classes=3)   # test.py: a padded frame is an all-background frame, IoU_0 = 1
  counted.add(_one_hot_logits(np.concatenate([FRAME_PREDS, pad]), 3), np.concatenate([FRAME_LABELS, pad]))
  np.testing.assert_allclose(counted.per_class()[0][0], (1 + 0.75 + 1) / 3, rtol=1e-6)


def test_thresholds_and_histc_match_torch():
  ours = metrics.thresholds()
  assert ours[0] == 0 and ours[-1] == 1.0 and ours.dtype == np.float32
  # torch's CUDA kernel formula, in torch fp32 ops
  start, end, n = torch.tensor(0.0), torch.tensor(1 - 1e-10, dtype=torch.float32), 255
  step = (end - start) / (n - 1)
  idx = torch.arange(n, dtype=torch.float32)
  cuda_formula = torch.where(idx < n // 2, start + step * idx, end - step * (n - 1 - idx))
  np.testing.assert_array_equal(ours, cuda_formula.numpy())
  cpu = torch.linspace(0, 1 - 1e-10, n).numpy()
  assert np.abs(ours.view(np.int32) - cpu.view(np.int32)).max() <= 1
  values = np.random.default_rng(0).integers(0, 75, size=200).astype(np.float32)
  np.testing.assert_array_equal(metrics.histc(values, 71, 1, 71), torch.histc(torch.from_numpy(values), 71, 1, 71))
