"""The TFDS image-folder builder: built offline as array_record from generated PNGs, read back through Grain."""
import os

import numpy as np
import pytest
from PIL import Image

from mmjax.data import ImageReadError, make_pipeline
from mmjax.data.tfds_folder import build_image_folder

CLASSES = ('cat', 'dog', 'owl')


def _write_tree(root, per_class=(3, 2), size=(6, 5)):
  """root/{train,test}/<class>/<i>.png with random pixels; returns {split: {(label, pixel bytes)}} of RGB views.

  Some files are RGBA or palette PNGs, which the builder must convert to RGB like `ImageFolderSource`.
  """
  rng = np.random.default_rng(0)
  expected = {}
  for split, count in zip(('train', 'test'), per_class):
    expected[split] = set()
    for label, name in enumerate(CLASSES):
      (root / split / name).mkdir(parents=True)
      for i in range(count):
        pixels = rng.integers(0, 256, (*size, 4), dtype=np.uint8)
        image = Image.fromarray(pixels, 'RGBA')
        image = (image, image.convert('RGB'), image.convert('RGB').convert('P'))[i % 3]
        image.save(root / split / name / f'{i}.png')
        expected[split].add((label, np.asarray(image.convert('RGB')).tobytes()))
  return expected


def test_builds_array_record_and_feeds_grain(tmp_path):
  expected = _write_tree(tmp_path / 'images')
  builder = build_image_folder(tmp_path / 'images', tmp_path / 'tfds')
  assert builder.info.features['label'].names == list(CLASSES)
  assert list(builder.data_path.glob('*.array_record*'))
  sources = builder.as_data_source()
  for split, want in expected.items():
    got = {(int(ex['label']), ex['image'].tobytes()) for ex in (sources[split][i] for i in range(len(sources[split])))}
    assert len(sources[split]) == len(want) and got == want
    assert sources[split][0]['image'].dtype == np.uint8 and sources[split][0]['image'].shape == (6, 5, 3)
  batches = list(make_pipeline(sources['train'], global_batch_size=3, seed=0, shuffle=False, repeat=False,
                               process_index=0, process_count=1))
  assert [b['image'].shape for b in batches] == [(3, 6, 5, 3)] * 3
  assert sorted(np.concatenate([b['label'] for b in batches]).tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_grayscale_resized_build(tmp_path):
  _write_tree(tmp_path / 'images', per_class=(1, 1))
  builder = build_image_folder(tmp_path / 'images', tmp_path / 'tfds', grayscale=True, image_size=(4, 3))
  example = builder.as_data_source()['test'][0]
  assert example['image'].shape == (4, 3, 1) and example['image'].dtype == np.uint8


def test_reuses_a_matching_build_and_refuses_a_stale_one(tmp_path):
  _write_tree(tmp_path / 'images', per_class=(1, 1))
  first = build_image_folder(tmp_path / 'images', tmp_path / 'tfds')
  files = {p.name: os.stat(p).st_mtime_ns for p in first.data_path.iterdir()}
  again = build_image_folder(tmp_path / 'images', tmp_path / 'tfds')
  assert {p.name: os.stat(p).st_mtime_ns for p in again.data_path.iterdir()} == files
  with pytest.raises(ValueError, match='holds a build of .*grayscale.: False.*pass another data_dir'):
    build_image_folder(tmp_path / 'images', tmp_path / 'tfds', grayscale=True)
  Image.new('RGB', (5, 6)).save(tmp_path / 'images' / 'train' / 'cat' / 'new.png')
  with pytest.raises(ValueError, match='holds a build of'):
    build_image_folder(tmp_path / 'images', tmp_path / 'tfds')


def test_splits_with_different_classes_are_refused(tmp_path):
  _write_tree(tmp_path / 'images', per_class=(1, 1))
  for f in (tmp_path / 'images' / 'test' / 'owl').iterdir():
    f.unlink()
  (tmp_path / 'images' / 'test' / 'owl').rmdir()
  with pytest.raises(ValueError, match=r"images/test has class folders \['cat', 'dog'\].*same class folders"):
    build_image_folder(tmp_path / 'images', tmp_path / 'tfds')


def test_an_unreadable_image_is_named(tmp_path):
  _write_tree(tmp_path / 'images', per_class=(1, 1))
  (tmp_path / 'images' / 'train' / 'dog' / 'broken.png').write_bytes(b'not a png')
  with pytest.raises(ImageReadError, match='broken.png'):
    build_image_folder(tmp_path / 'images', tmp_path / 'tfds')
