"""ImageFolderSource over tiny trees written with PIL."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmjax.data import ImageFolderSource, ImageReadError, make_iterator, make_pipeline

# Class folders written in non-sorted order; each image is one flat RGB colour.
_COLOURS = {"cat": (200, 10, 30), "ant": (0, 128, 255), "bee": (90, 90, 90)}


def _write(path: Path, colour, size=(4, 6)):
  """Writes a flat-colour RGB image of size (height, width)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", size[::-1], colour).save(path)


@pytest.fixture
def tree(tmp_path):
  for name, colour in _COLOURS.items():
    for i in range(2):
      _write(tmp_path / name / f"img{i}.png", colour)
  (tmp_path / "bee" / "notes.txt").write_text("not an image")
  return tmp_path


def test_labels_follow_sorted_class_names(tree):
  source = ImageFolderSource(tree)
  assert source.classes == ["ant", "bee", "cat"]
  assert len(source) == 6
  for i in range(len(source)):
    example = source[i]
    name = source.classes[int(example["label"])]
    assert source.samples[i][0].parent.name == name
    assert example["label"].dtype == np.int32 and example["label"].shape == ()
    assert example["image"].dtype == np.float32 and example["image"].shape == (4, 6, 3)
    np.testing.assert_allclose(example["image"][0, 0], np.array(_COLOURS[name]) / 255, atol=1e-7)
  assert [int(source[i]["label"]) for i in range(6)] == [0, 0, 1, 1, 2, 2]


def test_grayscale_and_resize(tree):
  _write(tree / "ant" / "big.jpg", _COLOURS["ant"], size=(9, 11))
  source = ImageFolderSource(tree, image_size=(5, 7), grayscale=True)
  assert len(source) == 7
  for i in range(len(source)):
    image = source[i]["image"]
    assert image.shape == (5, 7, 1)
    assert 0.0 <= image.min() <= image.max() <= 1.0
  grey = ImageFolderSource(tree, grayscale=True)[0]["image"]
  r, g, b = _COLOURS["ant"]
  np.testing.assert_allclose(grey, round((r * 299 + g * 587 + b * 114) / 1000) / 255, atol=1 / 255)


def test_mixed_sizes_batch_only_with_image_size(tree):
  _write(tree / "ant" / "big.png", _COLOURS["ant"], size=(9, 11))
  unresized = make_pipeline(ImageFolderSource(tree), global_batch_size=7, seed=0, shuffle=False)
  with pytest.raises(ValueError, match=r"'image'.*different shapes.*image_size"):
    next(make_iterator(unresized))
  resized = make_pipeline(ImageFolderSource(tree, image_size=(4, 6)), global_batch_size=7, seed=0)
  assert next(make_iterator(resized))["image"].shape == (7, 4, 6, 3)


def test_missing_root_names_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    ImageFolderSource(tmp_path / "nowhere")
  (tmp_path / "file.png").write_bytes(b"")
  with pytest.raises(NotADirectoryError, match="file.png"):
    ImageFolderSource(tmp_path / "file.png")


def test_empty_root_and_empty_class_name_the_problem(tmp_path):
  with pytest.raises(ValueError, match=f"{tmp_path}.*no class subfolders"):
    ImageFolderSource(tmp_path)
  _write(tmp_path / "a" / "x.png", (1, 2, 3))
  (tmp_path / "b").mkdir()
  with pytest.raises(ValueError, match=r"\['b'\] have no images"):
    ImageFolderSource(tmp_path)


def test_corrupt_file_error_names_the_file(tree):
  bad = tree / "bee" / "x.png"
  bad.write_bytes(b"\x00garbage, not a png\xff" * 10)
  source = ImageFolderSource(tree)
  index = [path for path, _ in source.samples].index(bad)
  source[index - 1]  # Other images still read.
  with pytest.raises(ImageReadError, match=f"{bad}.*UnidentifiedImageError") as info:
    source[index]
  assert info.value.paths == [bad]
  # Through the pipeline the error still names the file.
  ds = make_pipeline(source, global_batch_size=len(source), seed=0)
  with pytest.raises(ImageReadError, match=str(bad)):
    next(make_iterator(ds))


def test_verify_lists_every_bad_file(tree):
  truncated = tree / "cat" / "truncated.png"
  noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  Image.fromarray(noise).save(truncated)
  truncated.write_bytes(truncated.read_bytes()[:1500])  # Cut inside the pixel data.
  garbage = tree / "ant" / "x.png"
  garbage.write_bytes(b"nonsense")
  source = ImageFolderSource(tree)
  with pytest.raises(ImageReadError) as info:
    source.verify()
  assert sorted(info.value.paths) == sorted([truncated, garbage])
  assert "2 of 8 images" in str(info.value) and "image file is truncated" in str(info.value)
  assert str(truncated) in str(info.value) and str(garbage) in str(info.value)
  garbage.unlink()
  truncated.unlink()
  ImageFolderSource(tree).verify()
