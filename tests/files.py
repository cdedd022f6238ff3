"""What a folder holds, to assert that an operation changed nothing in it."""
from __future__ import annotations

import os


def snapshot(root: str | os.PathLike, *, mtimes: bool = False) -> dict[str, object]:
  """{relative path: file bytes, or None for a directory} of everything under root; with mtimes, (content,
  mtime_ns) pairs, so that rewriting a file with the same bytes also shows."""
  out: dict[str, object] = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
      path = os.path.join(dirpath, name)
      content = None
      if name in filenames:
        with open(path, 'rb') as fh:
          content = fh.read()
      out[os.path.relpath(path, root)] = (content, os.lstat(path).st_mtime_ns) if mtimes else content
  return out
