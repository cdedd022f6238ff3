"""AVSBench's evaluation metrics, ported to NumPy as its code computes them (fp32 where it is fp32).

S4 / MS3 (AVSBench `utils/utility.py` + `test.py`), over frames of a test batch (batch of videos x 5 frames):
  mIoU: pred = sigmoid(logit) > 0.5; IoU = inter / (union + 1e-7). A frame whose ground truth is empty scores the
    fraction of pixels predicted background (inter = sum((1 - gt)(1 - pred)), union = H * W). The batch value is the
    mean over its frames; the reported number is the UNWEIGHTED mean over batches.
  F-score: 255 thresholds linspace(0, 1 - 1e-10) on the sigmoid (in fp32 the last one is exactly 1.0); per frame
    P = tp / (sum(pred) + 1e-20), R = tp / (sum(gt) + 1e-20), F = 1.3 P R / (0.3 P + R) (beta^2 = 0.3), NaN -> 0;
    frames with an empty ground truth are skipped. The batch value is the MAXIMUM over thresholds of the batch's mean
    F curve (0 when every frame of the batch is empty); the reported number is the mean over batches.

Batch dependence: both numbers are means of per-batch values, so they change with the batch size and with the order
of the videos whenever batches differ in size or content (COMBO-AVS #7, AVSBench #17). The official protocol is test
batch 4 videos (TEST_BATCH_SIZE), unshuffled, in the csv order, the last batch short; `binary_metrics` follows it.

AVSS (AVSBench `avss/utils/compute_color_metrics.py` + `avss/test.py`), accumulated frame by frame, so independent of
batching: argmax of the softmax over C = 71 classes; per frame and class, torch.histc areas of the intersection, the
prediction and the label (`histc`); IoU_c = inter / (2.22e-16 + union) and F_c (beta^2 = 0.3, NaN -> 0) are summed
over frames, and cls_count_c counts the frames with union_c > 0. Finally IoU_c / cls_count_c and F_c / cls_count_c
(NaN -> 0) are averaged over ALL C classes (`miou`, `fscore`) and over all but the last index (`miou_noBg`,
`fscore_noBg`, as test.py codes them: `miou_pc[:-1]`).
Caution (our reading of the data; an entry for the README): the released masks paint background black, palette entry
0, so background is class 0 and test.py's `[:-1]` drops the last class (70), not background; `miou_no_background`
and `fscore_no_background` drop class `background` (0) instead. test.py counts every one of the 10 frames, padded
ones included (their ground truth is all background); pass `frame_mask` (gt_temporal_mask_flag) to skip them.

Exactness: every per-frame value is computed in fp32 with the same operations in the same order as torch; sums of
per-frame values run left to right (torch's vectorised reductions may differ in the last bit), and our sigmoid and
softmax may differ from torch's by one ulp.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

TEST_BATCH_SIZE = 4          # videos per test batch (AVSBench test.py --test_batch_size)
NUM_THRESHOLDS = 255         # F-score thresholds (Eval_Fmeasure pr_num)
BETA2 = 0.3                  # F-score beta^2
IOU_EPS = 1e-7               # mask_iou eps
PR_EPS = 1e-20               # _eval_pr eps
AVSS_EPS = 2.220446049250313e-16
AVSS_NUM_CLASSES = 71        # 70 sounding classes + background


def sigmoid(logits: np.ndarray) -> np.ndarray:
  """fp32 logistic of `logits` (any shape)."""
  x = np.asarray(logits, np.float32)
  with np.errstate(over='ignore'):
    return (np.float32(1) / (np.float32(1) + np.exp(-x))).astype(np.float32)


def thresholds(num: int = NUM_THRESHOLDS) -> np.ndarray:
  """fp32 [num]: torch.linspace(0, 1 - 1e-10, num) as torch's CUDA kernel computes it, which AVSBench ran (start +
  step * i for the first half, end - step * (num - 1 - i) for the rest, step = (end - start) / (num - 1) in fp32).
  torch's vectorised CPU kernel differs in the last bit for some entries."""
  start, end = np.float32(0.0), np.float32(1 - 1e-10)
  step = np.float32((end - start) / np.float32(num - 1))
  i = np.arange(num)
  low = start + step * i.astype(np.float32)
  high = end - step * (num - 1 - i).astype(np.float32)
  return np.where(i < num // 2, low, high).astype(np.float32)


def _check_frames(pred: np.ndarray, target: np.ndarray, what: str) -> None:
  if pred.ndim != 3 or pred.shape != target.shape:
    raise ValueError(f'{what}: predictions and masks must both be [N, H, W] frames of one shape, got '
                     f'{pred.shape} and {target.shape}')


def mask_iou(logits: np.ndarray, target: np.ndarray) -> np.float32:
  """mIoU of one test batch: logits, target [N, H, W] (target binary 0/1) -> fp32 mean over the N frames."""
  logits, target = np.asarray(logits, np.float32), np.asarray(target, np.float32)
  _check_frames(logits, target, 'mask_iou')
  num_pixels = np.float32(target.shape[1] * target.shape[2])
  pred = (sigmoid(logits) > 0.5).astype(np.float32)
  empty = target.sum(axis=(1, 2)) == 0
  inter = np.where(empty, ((1 - target) * (1 - pred)).sum(axis=(1, 2)), (pred * target).sum(axis=(1, 2)))
  union = np.where(empty, num_pixels, np.maximum(pred, target).sum(axis=(1, 2)))
  iou = (inter.astype(np.float32) / (union.astype(np.float32) + np.float32(IOU_EPS))).astype(np.float32)
  return np.float32(_sum_in_order(iou) / np.float32(logits.shape[0]))


def _sum_in_order(values: Iterable[np.float32]) -> np.float32:
  total = np.float32(0)
  for v in values:
    total = np.float32(total + v)
  return total


def fscore_curve(probs: np.ndarray, target: np.ndarray, num: int = NUM_THRESHOLDS) -> np.ndarray:
  """fp32 [num]: one frame's F-score at each threshold (probs, target [H, W]; NaN -> 0)."""
  probs, target = np.asarray(probs, np.float32), np.asarray(target, np.float32)
  above = (probs[None] >= thresholds(num)[:, None, None]).astype(np.float32)   # [num, H, W]
  tp = (above * target).sum(axis=(1, 2), dtype=np.float32)
  precision = tp / (above.sum(axis=(1, 2), dtype=np.float32) + np.float32(PR_EPS))
  recall = tp / (target.sum(dtype=np.float32) + np.float32(PR_EPS))
  with np.errstate(invalid='ignore', divide='ignore'):
    f = np.float32(1 + BETA2) * precision * recall / (np.float32(BETA2) * precision + recall)
  return np.where(np.isnan(f), np.float32(0), f).astype(np.float32)


def eval_fmeasure(logits: np.ndarray, target: np.ndarray, num: int = NUM_THRESHOLDS) -> float:
  """F-score of one test batch: logits, target [N, H, W] -> max over thresholds of the mean F curve of the frames
  whose ground truth is not empty (0.0 when all are empty)."""
  logits, target = np.asarray(logits, np.float32), np.asarray(target, np.float32)
  _check_frames(logits, target, 'eval_fmeasure')
  probs = sigmoid(logits)
  total, count, score = np.zeros(num, np.float32), 0, np.zeros(num, np.float32)
  for frame_probs, frame_target in zip(probs, target):
    if frame_target.mean(dtype=np.float32) == 0.0:
      continue
    total = (total + fscore_curve(frame_probs, frame_target, num)).astype(np.float32)
    count += 1
    score = (total / np.float32(count)).astype(np.float32)
  return float(score.max())


def batches(num_videos: int, batch_size: int = TEST_BATCH_SIZE) -> list[slice]:
  """Consecutive video slices of an unshuffled loader without drop_last: [0, b), [b, 2b), ..., the last short."""
  if batch_size < 1:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  return [slice(s, min(s + batch_size, num_videos)) for s in range(0, num_videos, batch_size)]


class BinaryMetrics:
  """Running S4 / MS3 metrics: `add(logits, masks)` per test batch ([B, T, H, W] or [B*T, H, W] frames), then
  `result()` -> {'miou', 'fscore', 'batches'}: unweighted means over batches (mIoU summed in fp32 and F in float64,
  as AVSBench's AverageMeter sums a fp32 tensor and Python floats)."""

  def __init__(self):
    self.miou_sum, self.fscore_sum, self.count = np.float32(0), 0.0, 0

  def add(self, logits: np.ndarray, masks: np.ndarray) -> tuple[float, float]:
    """Adds one batch; returns its (mIoU, F-score)."""
    logits, masks = np.asarray(logits), np.asarray(masks)
    logits = logits.reshape((-1,) + logits.shape[-2:])
    masks = masks.reshape((-1,) + masks.shape[-2:])
    miou, f = mask_iou(logits, masks), eval_fmeasure(logits, masks)
    self.miou_sum = np.float32(self.miou_sum + miou)
    self.fscore_sum += f
    self.count += 1
    return float(miou), f

  def result(self) -> dict[str, float]:
    if not self.count:
      raise ValueError('BinaryMetrics.result(): no batch was added')
    return {'miou': float(self.miou_sum / np.float32(self.count)), 'fscore': self.fscore_sum / self.count,
            'batches': self.count}


def binary_metrics(logits: np.ndarray, masks: np.ndarray, batch_size: int = TEST_BATCH_SIZE) -> dict[str, float]:
  """S4 / MS3 metrics of a whole test split in the official protocol: logits, masks [V, T, H, W] in the csv order,
  cut into consecutive batches of `batch_size` videos (TEST_BATCH_SIZE = 4 is AVSBench's)."""
  logits, masks = np.asarray(logits), np.asarray(masks)
  if logits.ndim != 4 or logits.shape != masks.shape:
    raise ValueError(f'binary_metrics: logits and masks must both be [videos, frames, H, W], got {logits.shape} '
                     f'and {masks.shape}')
  meter = BinaryMetrics()
  for part in batches(logits.shape[0], batch_size):
    meter.add(logits[part], masks[part])
  return meter.result()


def histc(values: np.ndarray, bins: int, lo: float, hi: float) -> np.ndarray:
  """fp32 [bins]: torch.histc(values, bins, min=lo, max=hi): equal-width bins over [lo, hi], values outside
  ignored, a value equal to hi in the last bin."""
  v = np.asarray(values, np.float64).ravel()
  v = v[(v >= lo) & (v <= hi)]
  index = np.minimum(((v - lo) * bins / (hi - lo)).astype(np.int64), bins - 1)
  return np.bincount(index, minlength=bins).astype(np.float32)


def softmax(logits: np.ndarray, axis: int) -> np.ndarray:
  x = np.asarray(logits, np.float32)
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


class SemanticMetrics:
  """Running AVSS metrics over C classes: `add(logits [N, H, W, C], labels [N, H, W] int in [0, C))` per batch
  (frames of any batching, in order), then `result()`. Sums are per class in fp32, frame by frame, as AVSBench."""

  def __init__(self, num_classes: int = AVSS_NUM_CLASSES, background: int = 0):
    self.num_classes, self.background = num_classes, background
    self.iou_sum = np.zeros(num_classes, np.float32)
    self.fscore_sum = np.zeros(num_classes, np.float32)
    self.cls_count = np.zeros(num_classes, np.float32)

  def add(self, logits: np.ndarray, labels: np.ndarray, frame_mask: np.ndarray | None = None) -> None:
    """Adds frames. logits [N, H, W, C] (channels last); labels [N, H, W]; frame_mask [N] (1 = count the frame;
    None counts all, as test.py)."""
    logits, labels = np.asarray(logits, np.float32), np.asarray(labels)
    c = self.num_classes
    if logits.ndim != 4 or logits.shape[-1] != c or logits.shape[:3] != labels.shape:
      raise ValueError(f'SemanticMetrics.add: logits must be [N, H, W, {c}] and labels [N, H, W], got '
                       f'{logits.shape} and {labels.shape}')
    if labels.size and (labels.min() < 0 or labels.max() >= c):
      raise ValueError(f'SemanticMetrics.add: labels must lie in [0, {c}), got [{labels.min()}, {labels.max()}]')
    keep = np.ones(len(labels), bool) if frame_mask is None else np.asarray(frame_mask).reshape(-1) > 0
    predict = (np.argmax(softmax(logits, -1), axis=-1) + 1).astype(np.float32)
    target = labels.astype(np.float32) + 1
    predict = predict * (target > 0).astype(np.float32)
    intersection = predict * (predict == target).astype(np.float32)
    for i in np.flatnonzero(keep):
      area_inter = histc(intersection[i], c, 1, c)
      area_pred = histc(predict[i], c, 1, c)
      area_lab = histc(target[i], c, 1, c)
      area_union = area_pred + area_lab - area_inter
      self.iou_sum += (area_inter / (np.float32(AVSS_EPS) + area_union)).astype(np.float32)
      self.cls_count[area_union > 0] += 1
      with np.errstate(invalid='ignore', divide='ignore'):
        precision, recall = area_inter / area_pred, area_inter / area_lab
        f = np.float32(1 + BETA2) * precision * recall / (np.float32(BETA2) * precision + recall)
      self.fscore_sum += np.where(np.isnan(f), np.float32(0), f).astype(np.float32)

  def per_class(self) -> tuple[np.ndarray, np.ndarray]:
    """(IoU_c, F_c) fp32 [C]: the sums over counted frames divided by cls_count_c, NaN (never seen) -> 0."""
    with np.errstate(invalid='ignore', divide='ignore'):
      iou, f = self.iou_sum / self.cls_count, self.fscore_sum / self.cls_count
    return np.nan_to_num(iou, nan=0.0).astype(np.float32), np.nan_to_num(f, nan=0.0).astype(np.float32)

  def result(self) -> dict[str, float]:
    """miou / fscore over all C classes; *_noBg over all but the last index (as test.py); *_no_background over
    all but class `background`; classes: the number with cls_count > 0."""
    iou, f = self.per_class()
    rest = np.arange(self.num_classes) != self.background
    return {'miou': float(iou.mean()), 'fscore': float(f.mean()),
            'miou_noBg': float(iou[:-1].mean()), 'fscore_noBg': float(f[:-1].mean()),
            'miou_no_background': float(iou[rest].mean()), 'fscore_no_background': float(f[rest].mean()),
            'classes': int((self.cls_count != 0).sum())}
