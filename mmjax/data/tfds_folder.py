"""A TFDS builder for an image-classification folder tree, built offline and without TensorFlow.

The manual dir holds one folder per split, each with one folder per class (what `ImageFolderSource` reads):

  DIR/train/<class>/<image files>    DIR/test/<class>/<image files>

`build_image_folder(DIR, data_dir)` decodes every image once (all unreadable files are named in one error),
re-encodes each as PNG in the chosen colour mode and size, and writes every split as array_record files under
`data_dir`. `builder.as_data_source()[split]` is then a random-access source that Grain reads directly, with
examples {'image': uint8 [H, W, C], 'label': int64 []} (C = 1 grayscale, 3 RGB). Nothing is downloaded and
TensorFlow is never imported: TFDS needs it for tf.data and TFRecord files, not for array_record.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import tensorflow_datasets as tfds

from mmjax.data.image_folder import ImageFolderSource, verify_image_folders


class ImageClassFolder(tfds.core.GeneratorBasedBuilder):
  """Splits `splits` of manual_dir/<split>/<class>/<image files>; every split must have the same class folders.

  Labels index the sorted class names (`info.features['label'].names`). The builder records the source folder,
  the options and the example counts, so that `build_image_folder` can tell a build it may reuse from a stale one.
  """

  VERSION = tfds.core.Version('1.0.0')
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'Lay the images out as <manual_dir>/<split>/<class name>/<image files>.'

  def __init__(self, *, manual_dir: str | os.PathLike, splits: Sequence[str] = ('train', 'test'),
               grayscale: bool = False, image_size: tuple[int, int] | None = None, **kwargs):
    """Scans the tree; kwargs go to the TFDS builder (data_dir, file_format, ...).

    Raises:
      FileNotFoundError / ValueError: as `ImageFolderSource` for each split folder, or the splits' class folders
        differ (labels would then mean different classes in different splits).
    """
    self._manual_dir = Path(manual_dir)
    self._options = {'grayscale': bool(grayscale), 'image_size': None if image_size is None else list(image_size)}
    self._sources = {split: ImageFolderSource(self._manual_dir / split, image_size=image_size, grayscale=grayscale)
                     for split in splits}
    self._classes = next(iter(self._sources.values())).classes
    for source in self._sources.values():
      if source.classes != self._classes:
        raise ValueError(f'{source.root} has class folders {source.classes}, but {splits[0]!r} has '
                         f'{self._classes}; every split needs the same class folders.')
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    size = self._options['image_size']
    shape = (*(size or (None, None)), 1 if self._options['grayscale'] else 3)
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'Image classification folders from {self._manual_dir}.',
        features=tfds.features.FeaturesDict({'image': tfds.features.Image(shape=shape, encoding_format='png'),
                                             'label': tfds.features.ClassLabel(names=self._classes)}),
        supervised_keys=('image', 'label'),
        metadata=tfds.core.MetadataDict(self.recipe()))

  def recipe(self) -> dict:
    """What a build of this builder holds: source folder, options and examples per split (JSON-serialisable)."""
    return {'manual_dir': str(self._manual_dir.resolve()), **self._options,
            'num_examples': {split: len(source) for split, source in self._sources.items()}}

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
    del dl_manager  # the sources were scanned from the same manual_dir at construction
    verify_image_folders(self._sources.values())  # every split's unreadable files, named in one error
    return {split: self._generate_examples(source) for split, source in self._sources.items()}

  def _generate_examples(self, source: ImageFolderSource) -> Iterator[tuple[str, dict]]:
    for path, label in source.samples:
      yield str(path.relative_to(source.root)), {'image': source.open_image(path), 'label': label}


def build_image_folder(manual_dir: str | os.PathLike, data_dir: str | os.PathLike, *,
                       splits: Sequence[str] = ('train', 'test'), grayscale: bool = False,
                       image_size: tuple[int, int] | None = None) -> ImageClassFolder:
  """Builds (or reuses) the array_record dataset of manual_dir's image folders under data_dir; returns the builder.

  A build already in data_dir is reused when it was made from the same folder with the same options and example
  counts; otherwise this raises ValueError naming both, since TFDS itself would silently serve the old build.
  """
  builder = ImageClassFolder(manual_dir=manual_dir, splits=splits, grayscale=grayscale, image_size=image_size,
                             data_dir=os.fspath(data_dir), file_format='array_record')
  if builder.is_prepared():
    built, wanted = dict(builder.info.metadata), builder.recipe()
    if built != wanted:
      raise ValueError(f'{builder.data_path} holds a build of {built}, not of {wanted}; pass another data_dir '
                       'or delete that folder.')
    return builder
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  return builder
