"""PNG overlays of predicted masks on frames, for a person to look at.

Binary (S4 / MS3): the predicted mask tinted over the frame, the ground-truth outline optional. Semantic (AVSS):
each predicted class tinted in its AVSBench palette colour (background left as is), with the names of the predicted
sounding sources written in the corner. A row of T frames is written as one PNG.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from experiments.avesformer.data import IMAGENET_MEAN, IMAGENET_STD, palette

TINT = np.array([255, 40, 40], np.float32)
OUTLINE = np.array([40, 255, 40], np.uint8)


def denormalize(frames: np.ndarray) -> np.ndarray:
  """ImageNet-normalised float [..., 3] -> uint8 [..., 3]."""
  rgb = (np.asarray(frames, np.float32) * IMAGENET_STD + IMAGENET_MEAN) * 255
  return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def _blend(rgb: np.ndarray, where: np.ndarray, colour: np.ndarray, alpha: float) -> np.ndarray:
  out = rgb.astype(np.float32)
  out[where] = (1 - alpha) * out[where] + alpha * colour
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _edges(mask: np.ndarray) -> np.ndarray:
  """bool [H, W]: mask pixels with a 4-neighbour outside the mask."""
  padded = np.pad(mask, 1)
  inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
  return mask & ~inner


def binary_overlay(frame: np.ndarray, pred: np.ndarray, target: np.ndarray | None = None,
                   alpha: float = 0.5) -> np.ndarray:
  """uint8 [H, W, 3]: frame (uint8 [H, W, 3]) with pred (bool / {0, 1} [H, W]) tinted red and the target's outline
  in green."""
  out = _blend(np.asarray(frame, np.uint8), np.asarray(pred) > 0.5, TINT, alpha)
  if target is not None:
    out[_edges(np.asarray(target) > 0.5)] = OUTLINE
  return out


def semantic_overlay(frame: np.ndarray, labels: np.ndarray, class_names: Sequence[str], *, background: int = 0,
                     alpha: float = 0.5) -> np.ndarray:
  """uint8 [H, W, 3]: frame with each non-background class id of labels [H, W] tinted in its palette colour and the
  predicted sounding classes named (largest first) in the top-left corner."""
  labels = np.asarray(labels)
  colours = palette(len(class_names)).astype(np.float32)
  out = np.asarray(frame, np.uint8)
  ids, counts = np.unique(labels[labels != background], return_counts=True)
  for c in ids:
    out = _blend(out, labels == c, colours[c], alpha)
  names = [class_names[c] for c in ids[np.argsort(-counts, kind='stable')]]
  image = Image.fromarray(out)
  ImageDraw.Draw(image).text((2, 1), ', '.join(names) or '(silent)', fill=(255, 255, 255), stroke_width=1,
                             stroke_fill=(0, 0, 0))
  return np.asarray(image)


def write_row(path: str | Path, images: Sequence[np.ndarray]) -> Path:
  """Writes uint8 images [H, W, 3] side by side as one PNG; returns the path."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.concatenate(list(images), axis=1)).save(path)
  return path


def write_binary_overlays(path: str | Path, frames: np.ndarray, probs: np.ndarray,
                          masks: np.ndarray | None = None) -> Path:
  """One clip's row: normalised frames [T, H, W, 3], predicted probabilities [T, H, W] (shown above 0.5),
  ground-truth masks [T, H, W] outlined."""
  rgb = denormalize(frames)
  return write_row(path, [binary_overlay(rgb[t], probs[t] > 0.5, None if masks is None else masks[t])
                          for t in range(len(rgb))])


def write_semantic_overlays(path: str | Path, frames: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                            frame_flags: np.ndarray | None = None) -> Path:
  """One AVSS clip's row: normalised frames [T, H, W, 3], predicted class ids [T, H, W]; frames whose frame_flags
  is 0 (padding) are left out."""
  rgb = denormalize(frames)
  keep = range(len(rgb)) if frame_flags is None else np.flatnonzero(np.asarray(frame_flags) > 0)
  return write_row(path, [semantic_overlay(rgb[t], labels[t], class_names) for t in keep])
