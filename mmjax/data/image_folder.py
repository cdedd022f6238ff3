"""Random-access source over an image-folder tree: root/<class_name>/<image files>, and the image decoding it uses.

Pixel values keep their meaning whatever the file's PIL mode:
  8-bit modes (1, L, P, LA, PA, RGB, RGBA, CMYK, YCbCr, ...): converted by PIL to L or RGB, scaled by 1/255.
  16-bit grayscale (I;16, I;16L, I;16B, I;16N, e.g. 16-bit PNGs): scaled by 1/65535.
  I (32-bit integers, how some readers hold 16-bit data): scaled by 1/65535 when every value is in 0..65535.
  F (32-bit floats): kept as they are when every value is in [0, 1].
Anything else (another mode, or I / F values outside those ranges) is refused with an error naming the file, the
mode and the range; nothing is clipped. Grayscale data read as RGB repeats its one channel. Pillow itself decodes
16-bit-per-channel colour PNGs to 8-bit RGB (their high byte), so those read at 8-bit precision.
"""
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from absl import logging
from PIL import Image

from mmjax.data.image_check import MAX_LISTED, ImageReadError, check_images

DEFAULT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                      ".pgm")
EIGHT_BIT_MODES = frozenset(("1", "L", "P", "LA", "La", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                             "LAB", "HSV"))
SIXTEEN_BIT_MODES = frozenset(("I;16", "I;16L", "I;16B", "I;16N"))
# PIL's signals for bad files: OSError (incl. UnidentifiedImageError), and for some formats ValueError,
# SyntaxError or EOFError.
_PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def _deep_values(image: Image.Image, path: Path) -> np.ndarray:
  """float32 [H, W] in [0, 1] of a single-channel image deeper than 8 bits (see the module docstring)."""
  mode = image.mode
  if mode in SIXTEEN_BIT_MODES:
    return np.asarray(image).astype(np.float32) / 65535.0
  if mode in ("I", "F"):
    lo, hi = image.getextrema()
    if mode == "I" and 0 <= lo and hi <= 65535:
      return np.asarray(image, dtype=np.float32) / 65535.0
    if mode == "F" and 0.0 <= lo and hi <= 1.0:
      return np.asarray(image, dtype=np.float32)
    wanted = "0..65535 (16-bit data, scaled by 1/65535)" if mode == "I" else "[0, 1]"
    raise ImageReadError(f"image {path} has mode {mode} with values in [{lo}, {hi}]; this reader keeps only "
                         f"values in {wanted} and never clips: rescale the file", [path])
  raise ImageReadError(f"image {path} has PIL mode {mode}, which this reader cannot represent; convert it to an "
                       "8-bit (L, RGB) or 16-bit grayscale (I;16) image", [path])


def _decode(path: Path, grayscale: bool, image_size: tuple[int, int] | None) -> Image.Image | np.ndarray:
  """An 8-bit L / RGB PIL image for 8-bit files, else float32 [H, W] in [0, 1]; resized to image_size if set."""
  try:
    with Image.open(path) as image:
      image.load()
      if image.mode in EIGHT_BIT_MODES:
        image = image.convert("L" if grayscale else "RGB")
        if image_size is not None and image.size != image_size[::-1]:
          image = image.resize(image_size[::-1], Image.Resampling.BILINEAR)
        return image
      values = _deep_values(image, path)
  except ImageReadError:
    raise
  except _PIL_ERRORS as e:
    raise ImageReadError(f"cannot read image {path}: {type(e).__name__}: {e}", [path]) from e
  if image_size is not None and values.shape != tuple(image_size):
    # Mode F keeps the values' precision through the resize.
    values = np.asarray(Image.fromarray(values).resize(image_size[::-1], Image.Resampling.BILINEAR))
  return values


def read_image(path: str | Path, *, grayscale: bool = False,
               image_size: tuple[int, int] | None = None) -> np.ndarray:
  """Decodes `path` to float32 [H, W, C] in [0, 1] (see the module docstring), C = 1 with `grayscale`, else 3.

  Args:
    image_size: (height, width) to resize to (bilinear); None keeps the file's size.

  Raises:
    ImageReadError: PIL cannot decode the file, or its mode or values cannot be represented.
  """
  decoded = _decode(Path(path), grayscale, image_size)
  if isinstance(decoded, Image.Image):
    array = np.asarray(decoded, dtype=np.float32) / 255.0
    return array[..., None] if grayscale else array
  return np.repeat(decoded[..., None], 1 if grayscale else 3, axis=-1)


def read_image_8bit(path: str | Path, *, grayscale: bool = False,
                    image_size: tuple[int, int] | None = None) -> Image.Image:
  """As `read_image`, as an 8-bit PIL image in mode L or RGB (deeper values rounded to 256 levels, not clipped)."""
  decoded = _decode(Path(path), grayscale, image_size)
  if isinstance(decoded, Image.Image):
    return decoded
  image = Image.fromarray(np.round(decoded * 255.0).astype(np.uint8))
  return image if grayscale else image.convert("RGB")


def _listing(items: list[str]) -> str:
  more = [f"... and {len(items) - MAX_LISTED} more"] if len(items) > MAX_LISTED else []
  return "\n  " + "\n  ".join(items[:MAX_LISTED] + more)


def _skip_reason(path: Path, class_dir: Path, extensions: tuple[str, ...]) -> str | None:
  """Why `path` (not a directory) is not an example, or None when it is one."""
  if path.is_symlink() and not path.exists():
    return "broken symlink"
  if not path.is_file():
    return "not a regular file"
  if any(part.startswith(".") for part in path.relative_to(class_dir).parts):
    return "hidden"
  if path.suffix.lower() not in extensions:
    return "extension not in " + " ".join(extensions)
  return None


class ImageFolderSource:
  """Examples {'image': float32 [H, W, C] in [0, 1], 'label': int32 []} from root/<class>/<file>.

  Classes are the sorted names of the subfolders of `root`; label i is `classes[i]`. Each class
  folder is searched recursively for files whose extension (case-insensitive) is in `extensions`;
  the examples are ordered by class, then path. Every other entry is skipped and listed in
  `skipped` as (path, reason): hidden files and folders (names starting with '.'), files with
  other extensions or outside the class folders, broken symlinks, linked folders (not followed),
  sockets and the like; a warning counts them by reason and names the first ones. C is 1 with
  `grayscale`, else 3 (RGB; alpha is dropped). Pixel values follow the module docstring (16-bit
  files keep their values).

  Images are decoded when read, so a corrupt file raises `ImageReadError` naming it only when its
  example is read; `verify()` (or `verify_image_folders` for several splits) decodes every file up
  front and reports all bad ones at once.
  """

  def __init__(self, root: str | Path, *, image_size: tuple[int, int] | None = None,
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
      ValueError: `root` has no class folders or a class folder has no images (naming what was
        skipped there), or a bad argument.
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
    self.skipped: list[tuple[Path, str]] = [
        (p, "broken symlink" if p.is_symlink() and not p.exists() else
         "hidden" if p.name.startswith(".") else "not in a class folder")
        for p in sorted(self.root.iterdir()) if p.name not in self.classes]
    empty = []
    for label, name in enumerate(self.classes):
      class_dir = self.root / name
      images = []
      for path in sorted(class_dir.rglob("*")):
        if path.is_dir():
          if path.is_symlink():  # rglob does not descend into linked folders
            self.skipped.append((path, "symlink to a folder (not followed)"))
          continue
        reason = _skip_reason(path, class_dir, self.extensions)
        if reason is None:
          images.append(path)
        else:
          self.skipped.append((path, reason))
      if not images:
        empty.append(name)
      self.samples.extend((path, label) for path in images)
    if empty:
      skipped = [f"{path}: {reason}" for path, reason in self.skipped if path.relative_to(self.root).parts[0] in empty]
      raise ValueError(f"image folder root {self.root}: class folders {empty} have no images with extensions "
                       f"{self.extensions}" + (f"; skipped there:{_listing(skipped)}" if skipped else ""))
    if self.skipped:
      counts: dict[str, int] = {}
      for _, reason in self.skipped:
        counts[reason] = counts.get(reason, 0) + 1
      logging.warning("ImageFolderSource %s: skipped %d files (%s):%s", self.root, len(self.skipped),
                      ", ".join(f"{n} {reason}" for reason, n in counts.items()),
                      _listing([f"{path}: {reason}" for path, reason in self.skipped]))

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

  def verify(self, num_threads: int | None = None) -> None:
    """Decodes every image; raises one ImageReadError listing all unreadable files, if any."""
    verify_image_folders([self], num_threads=num_threads)

  def open_image(self, path: Path) -> Image.Image:
    """Decodes `path` to an 8-bit PIL image in mode L (grayscale) or RGB, resized to `image_size` if set
    (`read_image_8bit`).

    Raises:
      ImageReadError: PIL cannot decode the file, or its mode or values cannot be represented.
    """
    return read_image_8bit(path, grayscale=self.grayscale, image_size=self.image_size)

  def _load(self, path: Path) -> np.ndarray:
    """Decodes `path` to float32 [H, W, C] in [0, 1]."""
    return read_image(path, grayscale=self.grayscale, image_size=self.image_size)


def verify_image_folders(sources: Iterable[ImageFolderSource], *, num_threads: int | None = None) -> None:
  """Decodes every image of every source (e.g. a dataset's train and test splits), each as its source reads it,
  in parallel with a progress bar.

  Raises:
    ImageReadError: one error listing every unreadable file of all the sources.
  """
  owner = {path: source for source in sources for path, _ in source.samples}
  roots = sorted({str(source.root) for source in owner.values()})
  check_images(owner, what=f"image folder {' and '.join(roots)}", decode=lambda path: owner[path]._load(path),
               num_threads=num_threads)
