"""Training-time augmentation of AVS clips: the recipes' scale jitter, one geometry for all frames of a clip.

What the recipes do:
  AVSegFormer [V dataloader/s4_dataset.py]: none; frames and masks are resized to 224 x 224 (recipe avsegformer:
    config.data.train_scales = (), train_hflip = 0).
  COMBO [V configs/avs_*/R50-*.yaml, models/data/dataset_mappers/*]: detectron2's ResizeShortestEdge to a short side
    drawn uniformly from int(s * 224) for s = 0.5, 0.6, ..., 2.0 (sampling 'choice', long side at most 896), a random
    224 x 224 crop (frames smaller than that are padded at the bottom and right: image 128, label the ignore value),
    a horizontal flip with probability 0.5 (RandomFlip), and SSD colour jitter; the transform drawn for the first
    frame is applied to every frame and mask of the clip (recipe combo: train_scales 0.5..2.0, train_hflip 0.5).

`ScaleJitter` reproduces the geometry (not the colour jitter) as a grain RandomMap over data.py's example schema, so
`make_pipeline` seeds it by (seed, position in the stream): the same on resume and for any process count. It is
applied to the training pipeline only; evaluation reads the sources as they are. Resampling:
  frames  bilinear, half-pixel centres, edges clamped, no antialiasing (torch's F.interpolate, align_corners=False)
          [A: detectron2 resizes uint8 frames with PIL, which antialiases when it shrinks]
  masks   nearest neighbour (source pixel floor((i + 0.5) * in / out)), so they keep their label values
  padding frames: COMBO's grey 128, ImageNet-normalised; masks: 0; the example gains `pixel_flags` float32 [T, S, S]
          (1 on image pixels, 0 on padding), which the losses use as pixel weights: padding counts as COMBO's ignore
          label does, not at all.
"""
from __future__ import annotations

from collections.abc import Sequence

import grain
import numpy as np

from experiments.avesformer.data import normalize
from mmjax.models.visual_taps import linear_weights

PAD_GREY = 128            # COMBO's image padding value (0..255)
MAX_SIZE_FACTOR = 4       # COMBO: MAX_SIZE_TRAIN 896 = 4 x 224


def combo_scales() -> tuple[float, ...]:
  """COMBO's short-side scales: 0.5, 0.6, ..., 2.0 of the crop size [V MIN_SIZE_TRAIN]."""
  return tuple(x / 10 for x in range(5, 21))


def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(i0, i1, w float32): output pixel j reads (1 - w) * in[i0] + w * in[i1] (visual_taps.linear_weights: half-pixel
  centres, clamped edges)."""
  i0, i1, w = linear_weights(n_in, n_out)
  return i0, i1, w.astype(np.float32)


def _nearest_taps(n_in: int, n_out: int) -> np.ndarray:
  return np.minimum(np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def output_shape(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
  """detectron2's ResizeShortestEdge: (h, w) scaled so that the short side is `short`, the long one <= max_size."""
  scale = short / min(h, w)
  new_h, new_w = (short, scale * w) if h < w else (scale * h, short)
  if max(new_h, new_w) > max_size:
    factor = max_size / max(new_h, new_w)
    new_h, new_w = new_h * factor, new_w * factor
  return int(new_h + 0.5), int(new_w + 0.5)


class ScaleJitter(grain.transforms.RandomMap):
  """Resize each clip so its short side is int(s * size), s drawn from `scales`, crop (or pad to) size x size at a
  random place, flip horizontally with probability `hflip`; one draw per clip (module docstring).

  Example in: frames float32 [T, H, W, 3] (ImageNet-normalised), masks [T, H, W] (any label dtype), other keys as they
  are. Out: frames [T, size, size, 3], masks [T, size, size] (same dtype and label values, plus 0 on padding),
  pixel_flags float32 [T, size, size]."""

  def __init__(self, scales: Sequence[float], size: int, hflip: float = 0.0):
    if not scales or min(scales) <= 0:
      raise ValueError(f'scale jitter: scales must be positive numbers, got {tuple(scales)}')
    if not 0 <= hflip <= 1:
      raise ValueError(f'scale jitter: hflip is a probability, got {hflip}')
    self.scales, self.size, self.hflip = tuple(float(s) for s in scales), int(size), float(hflip)
    self.pad = normalize(np.full(3, PAD_GREY, np.uint8))

  def random_map(self, example: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    frames, masks = np.asarray(example['frames']), np.asarray(example['masks'])
    t, h, w = masks.shape
    if frames.shape[:3] != (t, h, w):
      raise ValueError(f'scale jitter: frames {frames.shape} and masks {masks.shape} differ in size')
    short = int(self.scales[int(rng.integers(len(self.scales)))] * self.size)
    new_h, new_w = output_shape(h, w, short, MAX_SIZE_FACTOR * self.size)
    crop_h, crop_w = min(new_h, self.size), min(new_w, self.size)
    y0 = int(rng.integers(new_h - crop_h + 1))
    x0 = int(rng.integers(new_w - crop_w + 1))
    flip = bool(rng.random() < self.hflip)
    # Taps of the output pixels inside the crop window only.
    ry0, ry1, wy = (a[y0:y0 + crop_h] for a in _bilinear_taps(h, new_h))
    rx0, rx1, wx = (a[x0:x0 + crop_w] for a in _bilinear_taps(w, new_w))
    top = frames[:, ry0]  # a + (b - a) w: a constant region stays exactly constant
    rows = top + (frames[:, ry1] - top) * wy[:, None, None]
    left = rows[:, :, rx0]
    resized = left + (rows[:, :, rx1] - left) * wx[:, None]
    ny, nx = _nearest_taps(h, new_h)[y0:y0 + crop_h], _nearest_taps(w, new_w)[x0:x0 + crop_w]
    labels = masks[:, ny][:, :, nx]
    if flip:  # before the padding, which is always at the bottom and right (COMBO pads after its transforms)
      resized, labels = resized[:, :, ::-1], labels[:, :, ::-1]
    out_frames = np.broadcast_to(self.pad, (t, self.size, self.size, 3)).astype(np.float32)
    out_masks = np.zeros((t, self.size, self.size), masks.dtype)
    flags = np.zeros((t, self.size, self.size), np.float32)
    out_frames[:, :crop_h, :crop_w] = resized
    out_masks[:, :crop_h, :crop_w] = labels
    flags[:, :crop_h, :crop_w] = 1
    return {**example, 'frames': out_frames, 'masks': out_masks, 'pixel_flags': flags}


def train_transform(scales: Sequence[float], hflip: float, size: int) -> ScaleJitter | None:
  """The training pipeline's transform from config.data (train_scales, train_hflip, image_size); None when both are
  off (no scales: the short side stays `size`)."""
  if not scales and not hflip:
    return None
  return ScaleJitter(tuple(scales) or (1.0,), size, hflip)
