"""The embedded smoke dataset: scikit-learn's bundled 8x8 handwritten digits (1797 images, no download)."""
import functools
import importlib.util
import os
from pathlib import Path

import numpy as np
from PIL import Image


@functools.cache
def _all_digits() -> tuple[np.ndarray, np.ndarray]:
  """Images float32 [1797, 8, 8, 1] in [0, 1] and labels int32 [1797], read-only."""
  # The CSV that sklearn.datasets.load_digits() reads (64 pixels 0..16 and the label per row), read without
  # importing scikit-learn, which would add seconds to the start of every launch.py run on the digits. Its place
  # inside the package is not public API: where it is gone, load_digits() reads it.
  csv = Path(importlib.util.find_spec('sklearn').origin).parent / 'datasets' / 'data' / 'digits.csv.gz'
  if csv.is_file():
    rows = np.loadtxt(csv, delimiter=',')
  else:
    from sklearn.datasets import load_digits
    digits = load_digits()
    rows = np.concatenate([digits.data, digits.target[:, None]], axis=1)
  images = (rows[:, :-1].reshape(-1, 8, 8) / 16.0).astype(np.float32)[..., None]
  labels = rows[:, -1].astype(np.int32)
  images.flags.writeable = False
  labels.flags.writeable = False
  return images, labels


def split_indices(split: str, *, test_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
  """Sorted indices into the 1797 digits of `split`, stratified by label.

  From each class, round(test_fraction * class size) examples, drawn with `seed`, go to 'test' and
  the rest to 'train'; the two splits are disjoint and cover every example.
  """
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
  _, labels = _all_digits()
  rng = np.random.default_rng(seed)
  test = []
  for label in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == label))
    test.append(members[:round(test_fraction * len(members))])
  is_test = np.zeros(len(labels), dtype=bool)
  is_test[np.concatenate(test)] = True
  return np.flatnonzero(is_test if split == "test" else ~is_test)


class DigitsSource:
  """Examples {'image': float32 [8, 8, 1] = pixel / 16 in [0, 1], 'label': int32 []} of one split."""

  num_classes = 10

  def __init__(self, split: str, *, test_fraction: float = 0.2, seed: int = 0):
    """`split` is 'train' or 'test'; see `split_indices` for how `test_fraction` and `seed` split."""
    self.split = split
    self.indices = split_indices(split, test_fraction=test_fraction, seed=seed)
    images, labels = _all_digits()
    self.images = images[self.indices]
    self.labels = labels[self.indices]

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {"image": self.images[index].copy(), "label": np.asarray(self.labels[index])}

  def __repr__(self) -> str:
    return f"DigitsSource(split={self.split!r}, {len(self)} examples)"


def write_image_folder(root: str | os.PathLike, split: str, *, test_fraction: float = 0.2,
                       seed: int = 0) -> Path:
  """Writes `split` as an image-folder tree of 8x8 grayscale PNGs: root/<label>/<index:04d>.png.

  Class folders are named '0'..'9', so sorted class names give the digit labels; file names are the
  indices into the full dataset. Pixels are round(pixel / 16 * 255), so reading a PNG back
  as grayscale gives `DigitsSource` images to within 0.5 / 255.

  Returns:
    `root` as a Path.

  Raises:
    FileExistsError: `root` exists and is not an empty directory.
  """
  root = Path(root)
  if root.exists() and (not root.is_dir() or any(root.iterdir())):
    raise FileExistsError(f"{root} already exists and is not an empty directory")
  source = DigitsSource(split, test_fraction=test_fraction, seed=seed)
  for label in range(DigitsSource.num_classes):
    (root / str(label)).mkdir(parents=True, exist_ok=True)
  pixels = np.round(source.images[..., 0] * 255).astype(np.uint8)
  for index, image, label in zip(source.indices, pixels, source.labels):
    Image.fromarray(image).save(root / str(label) / f"{index:04d}.png")
  return root
