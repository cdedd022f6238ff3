"""scikit-learn's 8x8 digits upsampled for diffusion: images in [-1, 1] at S x S, the classes as labels."""
from __future__ import annotations

import jax
import numpy as np

from mmjax.data import DigitsSource


def upsample(images: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of images [N, h, w, C] to [N, size, size, C] (float32, same range: bilinear never overshoots)."""
  out = jax.image.resize(np.asarray(images, np.float32), (images.shape[0], size, size, images.shape[-1]), 'bilinear')
  return np.asarray(out, np.float32)


class UpsampledDigits:
  """Examples {'image': float32 [S, S, 1] in [-1, 1], 'label': int32 [] in [0, 10)} of one split of
  `mmjax.data.DigitsSource` (the same stratified split as vit_digits), bilinearly upsampled from 8 x 8."""

  num_classes = DigitsSource.num_classes

  def __init__(self, split: str, *, image_size: int, test_fraction: float = 0.2):
    base = DigitsSource(split, test_fraction=test_fraction)
    self.split = split
    self.images = upsample(base.images, image_size) * 2.0 - 1.0
    self.labels = base.labels

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {'image': self.images[index].copy(), 'label': np.asarray(self.labels[index])}

  def __repr__(self) -> str:
    return f'UpsampledDigits(split={self.split!r}, {len(self)} examples of {self.images.shape[1:]})'
