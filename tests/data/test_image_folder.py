"""ImageFolderSource over tiny trees written with PIL: labels, modes and bit depths, skipped files, bad files."""
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmjax.data import ImageFolderSource, ImageReadError, make_iterator, make_pipeline, verify_image_folders
from mmjax.data.image_folder import read_image, read_image_8bit

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
  assert "2 of 8 image files are unreadable" in str(info.value) and "image file is truncated" in str(info.value)
  assert str(truncated) in str(info.value) and str(garbage) in str(info.value)
  garbage.unlink()
  truncated.unlink()
  ImageFolderSource(tree).verify()


def test_16_bit_png_keeps_its_values(tmp_path):
  """A 16-bit grayscale PNG (PIL mode I;16) reads as value / 65535 in every channel layout, also resized; PIL's own
  conversion to 8 bits would clip 0..63000 to 0 and 255."""
  values = np.linspace(0, 63000, 4 * 6).astype(np.uint16).reshape(4, 6)
  path = tmp_path / "deep" / "a.png"
  path.parent.mkdir()
  Image.fromarray(values).save(path)
  with Image.open(path) as image:
    assert image.mode == "I;16"
  expected = values.astype(np.float32) / 65535
  grey = ImageFolderSource(tmp_path, grayscale=True)[0]["image"]
  np.testing.assert_allclose(grey[..., 0], expected, rtol=1e-6, atol=0)
  rgb = ImageFolderSource(tmp_path)[0]["image"]
  assert rgb.shape == (4, 6, 3)
  np.testing.assert_allclose(rgb, np.repeat(expected[..., None], 3, -1), rtol=1e-6, atol=0)
  resized = read_image(path, grayscale=True, image_size=(2, 3))
  assert resized.shape == (2, 3, 1) and len(np.unique(resized)) == 6
  assert expected.min() <= resized.min() and resized.max() <= expected.max()
  eight = np.asarray(read_image_8bit(path, grayscale=True))
  np.testing.assert_array_equal(eight, np.round(values / 65535 * 255).astype(np.uint8))


def test_deep_modes_keep_values_in_range_and_refuse_the_rest(tmp_path):
  ints = np.arange(12, dtype=np.int32).reshape(3, 4) * 5000  # mode I, 0..55000: 16-bit data
  Image.fromarray(ints).save(tmp_path / "i.tif")
  np.testing.assert_allclose(read_image(tmp_path / "i.tif", grayscale=True)[..., 0], ints / 65535, rtol=1e-6)
  floats = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
  Image.fromarray(floats).save(tmp_path / "f.tif")
  np.testing.assert_array_equal(read_image(tmp_path / "f.tif", grayscale=True)[..., 0], floats)
  Image.fromarray(ints * 2 - 7).save(tmp_path / "wide.tif")
  with pytest.raises(ImageReadError, match=r"wide.tif has mode I with values in \[-7, 109993\].*never clips"):
    read_image(tmp_path / "wide.tif")
  Image.fromarray(floats * 3).save(tmp_path / "bright.tif")
  with pytest.raises(ImageReadError, match=r"bright.tif has mode F with values in \[0.0, 3.0\]"):
    read_image(tmp_path / "bright.tif")


def test_skipped_files_are_counted_and_named(tree, caplog):
  dangling = tree / "ant" / "gone.png"
  os.symlink(tree / "nowhere.png", dangling)
  hidden = tree / "cat" / ".thumb.png"
  _write(hidden, (1, 2, 3))
  stray = tree / "stray.png"
  _write(stray, (1, 2, 3))
  with caplog.at_level(logging.WARNING):
    source = ImageFolderSource(tree)
  assert len(source) == 6
  assert sorted(source.skipped) == sorted([(dangling, "broken symlink"), (hidden, "hidden"),
                                           (stray, "not in a class folder"),
                                           (tree / "bee" / "notes.txt", "extension not in " +
                                            " ".join(source.extensions))])
  logged = caplog.text
  assert "skipped 4 files (1 not in a class folder, 1 broken symlink, 1 extension not in" in logged
  assert logged.rstrip().count("\n  ") >= 4 and ", 1 hidden)" in logged
  assert all(str(path) in logged for path, _ in source.skipped)
  empty = tree / "dog"
  empty.mkdir()
  os.symlink(tree / "nowhere.jpg", empty / "x.jpg")
  with pytest.raises(ValueError, match=r"\['dog'\] have no images.*skipped there:\n  .*dog/x.jpg: broken symlink"):
    ImageFolderSource(tree)


def test_verify_image_folders_lists_every_split_at_once(tmp_path):
  for split in ("train", "test"):
    for name, colour in _COLOURS.items():
      _write(tmp_path / split / name / "a.png", colour)
  bad_train = tmp_path / "train" / "ant" / "b.png"
  bad_test = tmp_path / "test" / "cat" / "b.png"
  bad_train.write_bytes(b"not a png")
  bad_test.write_bytes(b"")
  splits = [ImageFolderSource(tmp_path / split) for split in ("train", "test")]
  with pytest.raises(ImageReadError, match="2 of 8 image files are unreadable") as info:
    verify_image_folders(splits)
  assert info.value.paths == [bad_train, bad_test]
  assert str(tmp_path / "train") in str(info.value) and str(tmp_path / "test") in str(info.value)
