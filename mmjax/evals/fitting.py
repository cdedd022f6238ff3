"""Making prompts fit a model's window: left truncation of a text, random image subsampling."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mmjax.evals.prompt import Prompt


def truncate_left(render: Callable[[str], Prompt], text: str,
                  fits: Callable[[Prompt], bool]) -> tuple[Prompt, int]:
  """(render(text[start:]), start) for the smallest `start` whose prompt fits.

  The beginning of `text` is cut and its end kept (CoverBench: "trim from the beginning"). Assumes
  that a shorter text never takes more tokens, and binary-searches the cut in O(log len) renders.
  Raises ValueError when even the prompt without any of `text` does not fit.
  """
  whole = render(text)
  if fits(whole):
    return whole, 0
  if not fits(render('')):
    raise ValueError('the prompt does not fit the context window even with the text cut to nothing')
  lo, hi = 1, len(text)  # the answer lies in [lo, hi]; hi (empty text) fits
  while lo < hi:
    mid = (lo + hi) // 2
    if fits(render(text[mid:])):
      hi = mid
    else:
      lo = mid + 1
  return render(text[lo:]), lo


def subsample_images(prompt: Prompt, fits: Callable[[Prompt], bool], rng: np.random.Generator,
                     max_images: int = 0) -> tuple[Prompt, tuple[int, ...]]:
  """Drops random images (the rest keep their order) until at most `max_images` (0 = no limit)
  remain and the prompt fits. Returns (prompt, indices of the kept images).

  Raises ValueError when the prompt does not fit even with a single image.
  """
  keep = list(range(len(prompt.images)))
  if max_images and len(keep) > max_images:
    keep = sorted(rng.choice(keep, size=max_images, replace=False).tolist())

  def with_images(kept):
    return Prompt(prompt.text, tuple(prompt.images[i] for i in kept), prompt.assistant_prefix)

  out = with_images(keep)
  while not fits(out):
    if len(keep) <= 1:
      raise ValueError(f'the prompt does not fit the context window even with {len(keep)} image(s)')
    keep.pop(int(rng.integers(len(keep))))
    out = with_images(keep)
  return out, tuple(keep)
