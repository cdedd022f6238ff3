"""Up-front image checks: decode every image file of a dataset before a run starts, report all failures at once.

A run that meets an undecodable image at batch 40 000 has wasted hours and still names only that one file; a
check over every file before training (or generation) fails in seconds and lists them all. Decoding runs in a
thread pool (PIL releases the GIL while it decodes) with a tqdm progress bar.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from pathlib import Path

from absl import logging
from PIL import Image
from tqdm import tqdm

MAX_LISTED = 20  # problems named in an error; the rest are counted
_CHUNK = 4096  # files submitted to the pool at a time: bounded memory for millions of files


class ImageReadError(OSError, ValueError):
  """An image file that cannot be read or decoded; `paths` lists every offending file.

  Both an OSError (a file problem) and a ValueError (bad input data), so launch.py reports it as a user error.
  """

  def __init__(self, message: str, paths: list[Path]):
    super().__init__(message)
    self.paths = paths

  def __reduce__(self):
    return type(self), (self.args[0], self.paths)  # survives pickling (e.g. out of a grain worker process)


def decode_fully(path: Path) -> None:
  """Opens `path` with PIL and decodes all of its pixel data (opening alone reads only the header)."""
  with Image.open(path) as image:
    image.load()


def _problem(path: Path, decode: Callable[[Path], object]) -> str | None:
  """One line naming `path` and what is wrong with it, or None when it decodes."""
  if not path.is_file():
    return f"{path}: {'is not a file' if path.exists() else 'does not exist'}"
  try:
    decode(path)
  except Exception as e:  # PIL's plugins raise many types on corrupt data (struct.error, IndexError, ...): list each
    message = str(e)
    return message if str(path) in message else f"{path}: {type(e).__name__}: {message}"
  return None


def check_images(paths: Iterable[str | os.PathLike], *, what: str, decode: Callable[[Path], object] = decode_fully,
                 num_threads: int | None = None, progress: bool = True) -> None:
  """Decodes every file of `paths` (each distinct file once) with `decode`, in parallel.

  Args:
    paths: the image files, in any order; repeats are checked once.
    what: names the data in the progress bar and the error, e.g. "image folder data/train".
    decode: reads one file the way the run will (so a mode the reader refuses is found too); raises on failure.
      Default: `decode_fully`.
    num_threads: decoding threads; None: min(32, CPUs + 4) (ThreadPoolExecutor's default).
    progress: show a tqdm bar (on stderr).

  Raises:
    ImageReadError: some files are missing or do not decode; the message names the first MAX_LISTED with their
      reasons and counts the rest, `paths` holds all of them.
  """
  files = list(dict.fromkeys(Path(p) for p in paths))
  start = time.monotonic()
  bad: list[tuple[Path, str]] = []
  with futures.ThreadPoolExecutor(num_threads) as pool, \
      tqdm(total=len(files), desc=f"checking {what}", unit="img", disable=not progress or not files,
           mininterval=1.0, dynamic_ncols=True) as bar:
    for first in range(0, len(files), _CHUNK):
      chunk = files[first:first + _CHUNK]
      for path, problem in zip(chunk, pool.map(lambda p: _problem(p, decode), chunk)):
        if problem is not None:
          bad.append((path, problem))
        bar.update()
  logging.info("checked %d image files of %s in %.1f s: %d unreadable", len(files), what,
               time.monotonic() - start, len(bad))
  if bad:
    missing = sum(not path.exists() for path, _ in bad)
    lines = [problem for _, problem in bad[:MAX_LISTED]]
    if len(bad) > MAX_LISTED:
      lines.append(f"... and {len(bad) - MAX_LISTED} more")
    raise ImageReadError(f"{what}: {len(bad)} of {len(files)} image files are unreadable ({missing} missing, "
                         f"{len(bad) - missing} do not decode):\n  " + "\n  ".join(lines),
                         [path for path, _ in bad])
