"""Random-access source over an image-folder tree: root/<class_name>/<image files>."""
import os
from concurrent import futures
from pathlib import Path

import numpy as np
from absl import logging
from PIL import Image

DEFAULT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                      ".pgm")


class ImageReadError(OSError):
  """An image file that PIL cannot open or decode; `paths` lists the offending files."""

  def __init__(self, message: str, paths: list[Path]):
    super().__init__(message)
    self.paths = paths


class ImageFolderSource:
  """Examples {'image': float32 [H, W, C] in [0, 1], 'label': int32 []} from root/<class>/<file>.

  Classes are the sorted names of the subfolders of `root`; label i is `classes[i]`. Each class
  folder is searched recursively for files whose extension (case-insensitive) is in `extensions`;
  the examples are ordered by class, then path. Hidden files and folders (names starting with '.')
  are skipped; files with other extensions are not examples, and their count is logged. C is 1
  with `grayscale`, else 3 (RGB; alpha is dropped).

  Images are decoded when read, so a corrupt file raises `ImageReadError` naming it only when its
  example is read; `verify()` decodes every file up front and reports all bad ones at once.
  """

  def __init__(self, root: str | os.PathLike, *, image_size: tuple[int, int] | None = None,
               grayscale: bool = False, extensions: tuple[str, ...] = DEFAULT_EXTENSIONS):
    """Scans the tree.

    Args:
      root: folder holding one subfolder per class.
      image_size: (height, width) in pixels to resize every image to (bilinear); None keeps each
        image's own size, which then must agree across a batch.
      grayscale: decode to one luminance channel instead of RGB.
      extensions: file name endings that mark images, e.g. ('.png', '.jpg').

    Raises:
      FileNotFoundError: `root` does not exist.
      NotADirectoryError: `root` is not a directory.
      ValueError: `root` has no class folders or a class folder has no images, or a bad argument.
    """
    self.root = Path(root)
    if image_size is not None and (not isinstance(image_size, (tuple, list)) or len(image_size) != 2
                                   or min(image_size) < 1):
      raise ValueError(f"image_size must be (height, width) with positive sizes, got {image_size}")
    self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
    self.grayscale = grayscale
    self.extensions = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    if not self.root.exists():
      raise FileNotFoundError(f"image folder root {self.root} does not exist")
    if not self.root.is_dir():
      raise NotADirectoryError(f"image folder root {self.root} is not a directory")
    self.classes = sorted(p.name for p in self.root.iterdir()
                          if p.is_dir() and not p.name.startswith("."))
    if not self.classes:
      raise ValueError(f"image folder root {self.root} has no class subfolders; expected "
                       "root/<class_name>/<image files>")
    self.samples: list[tuple[Path, int]] = []
    empty, num_other_files = [], 0
    for label, name in enumerate(self.classes):
      class_dir = self.root / name
      files = sorted(p for p in class_dir.rglob("*") if p.is_file() and
                     not any(part.startswith(".") for part in p.relative_to(class_dir).parts))
      images = [p for p in files if p.suffix.lower() in self.extensions]
      num_other_files += len(files) - len(images)
      if not images:
        empty.append(name)
      self.samples.extend((path, label) for path in images)
    if empty:
      raise ValueError(f"image folder root {self.root}: class folders {empty} have no images with "
                       f"extensions {self.extensions}")
    if num_other_files:
      logging.info("ImageFolderSource %s: ignored %d files whose extension is not in %s",
                   self.root, num_other_files, self.extensions)

  def __len__(self) -> int:
    return len(self.samples)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if not -len(self) <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} images in {self.root}")
    path, label = self.samples[index]
    return {"image": self._load(path), "label": np.asarray(label, dtype=np.int32)}

  def __repr__(self) -> str:
    return (f"ImageFolderSource({str(self.root)!r}, {len(self)} images, {len(self.classes)} "
            f"classes, image_size={self.image_size}, grayscale={self.grayscale})")

  def verify(self, num_threads: int = 16) -> None:
    """Decodes every image; raises one ImageReadError listing all unreadable files, if any."""
    def error_of(path: Path) -> str | None:
      try:
        self._load(path)
      except ImageReadError as e:
        return str(e)
      return None

    paths = [path for path, _ in self.samples]
    with futures.ThreadPoolExecutor(num_threads) as pool:
      messages = list(pool.map(error_of, paths))
    bad = [(path, message) for path, message in zip(paths, messages) if message is not None]
    if bad:
      lines = "\n".join(message for _, message in bad)
      raise ImageReadError(f"{len(bad)} of {len(self)} images in {self.root} are unreadable:\n"
                           f"{lines}", [path for path, _ in bad])

  def open_image(self, path: Path) -> Image.Image:
    """Decodes `path` to a PIL image in mode L (grayscale) or RGB, resized to `image_size` if set.

    Raises:
      ImageReadError: PIL cannot open or decode the file.
    """
    try:
      with Image.open(path) as image:
        image = image.convert("L" if self.grayscale else "RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
      # PIL signals bad files with OSError (incl. UnidentifiedImageError), and for some formats
      # ValueError or SyntaxError.
      raise ImageReadError(f"cannot read image {path}: {type(e).__name__}: {e}", [path]) from e
    if self.image_size is not None and image.size != self.image_size[::-1]:
      image = image.resize(self.image_size[::-1], Image.Resampling.BILINEAR)
    return image

  def _load(self, path: Path) -> np.ndarray:
    """Decodes `path` to float32 [H, W, C] in [0, 1]."""
    array = np.asarray(self.open_image(path), dtype=np.float32) / 255.0
    return array[..., None] if self.grayscale else array
