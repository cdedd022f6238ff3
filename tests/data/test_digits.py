"""DigitsSource splits and the image-folder export."""
import numpy as np
import pytest

from mmjax.data import DigitsSource, ImageFolderSource, make_iterator, make_pipeline, split_indices, write_image_folder


def test_split_sizes_disjoint_and_covering():
  train, test = DigitsSource("train"), DigitsSource("test")
  assert len(train) + len(test) == 1797
  assert DigitsSource.num_classes == 10
  assert not set(train.indices) & set(test.indices)
  assert set(train.indices) | set(test.indices) == set(range(1797))


def test_split_is_stratified_and_seeded():
  train, test = DigitsSource("train"), DigitsSource("test")
  for label in range(10):
    in_train, in_test = np.sum(train.labels == label), np.sum(test.labels == label)
    assert in_test == round(0.2 * (in_train + in_test))
  np.testing.assert_array_equal(split_indices("test", seed=0), test.indices)
  assert not np.array_equal(split_indices("test", seed=1), test.indices)
  assert len(DigitsSource("test", test_fraction=0.5)) == pytest.approx(1797 / 2, abs=10)


def test_examples_shape_dtype_and_range():
  source = DigitsSource("train")
  images = np.stack([source[i]["image"] for i in range(len(source))])
  labels = np.stack([source[i]["label"] for i in range(len(source))])
  assert images.shape == (len(source), 8, 8, 1) and images.dtype == np.float32
  assert images.min() == 0.0 and images.max() == 1.0
  np.testing.assert_array_equal(np.unique(images * 16), np.arange(17))  # pixel / 16 exactly
  assert labels.dtype == np.int32 and set(labels.tolist()) == set(range(10))


def test_bad_arguments():
  with pytest.raises(ValueError, match="'valid'"):
    DigitsSource("valid")
  with pytest.raises(ValueError, match="test_fraction"):
    DigitsSource("train", test_fraction=1.0)


def test_write_image_folder_round_trips(tmp_path):
  root = write_image_folder(tmp_path / "digits", "test")
  digits = DigitsSource("test")
  folder = ImageFolderSource(root, grayscale=True)
  assert folder.classes == [str(i) for i in range(10)]
  assert len(folder) == len(digits)
  position = {int(index): i for i, index in enumerate(digits.indices)}
  for i in range(len(folder)):
    path, label = folder.samples[i]
    expected = digits[position[int(path.stem)]]
    example = folder[i]
    assert int(example["label"]) == int(expected["label"]) == label
    np.testing.assert_allclose(example["image"], expected["image"], atol=0.5 / 255 + 1e-7)
  batch = next(make_iterator(make_pipeline(folder, global_batch_size=16, seed=0)))
  assert batch["image"].shape == (16, 8, 8, 1)
  with pytest.raises(FileExistsError, match="not an empty directory"):
    write_image_folder(root, "test")
