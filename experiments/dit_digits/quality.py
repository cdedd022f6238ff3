"""Sample quality, measured: a digits classifier fitted on the real training images labels generated ones.

The classifier is scikit-learn's multinomial logistic regression on the S x S upsampled pixels (fitted in about a
second). Its accuracy on the real test split is the ceiling a perfect generator could reach; on samples drawn for
class y, the fraction it labels y is the conditional accuracy that classifier-free guidance should raise.
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from experiments.dit_digits.data import UpsampledDigits


class DigitsClassifier:
  """Predicts digit labels [N] from images [N, S, S, 1] in [−1, 1] (values outside are clipped)."""

  def __init__(self, image_size: int, *, test_fraction: float = 0.2, seed: int = 0):
    train = UpsampledDigits('train', image_size=image_size, test_fraction=test_fraction)
    test = UpsampledDigits('test', image_size=image_size, test_fraction=test_fraction)
    self._model = LogisticRegression(C=0.1, max_iter=2000, random_state=seed)
    self._model.fit(self._features(train.images), train.labels)
    self.real_test_accuracy = self.accuracy(test.images, test.labels)

  @staticmethod
  def _features(images: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(images, np.float32), -1.0, 1.0).reshape(len(images), -1)

  def predict(self, images: np.ndarray) -> np.ndarray:
    return self._model.predict(self._features(images)).astype(np.int32)

  def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(self.predict(images) == np.asarray(labels)))
