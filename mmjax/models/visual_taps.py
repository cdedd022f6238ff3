"""Visual tokens as fixed-shape gathers: where each LLaVA-OneVision visual token's embedding comes from.

The model packs an image's projected crop features into tokens by slicing (unpad), bilinear resizing (the max-N
reduction, video pooling) and newline columns whose shapes depend on the image's size (mmjax.models.anyres), so a
jitted train step would compile once per set of image sizes. Each of those tokens is a weighted sum of at most 4
feature cells: bilinear downsampling without antialiasing mixes 2 x 2 neighbours, slices and newlines take one.
So here every visual token is 4 (index, weight) taps into a per-example bank

  bank = [crop 0 features (side^2 rows), crop 1, ..., crop K-1, image_newline]    [K * side^2 + 1, E]

computed in NumPy from static sizes. The model side is one gather and a weighted sum with fixed shapes, for any
mix of image sizes, multi-image samples, videos and text-only samples: one compilation per run.

Taps are (index int32 [T, 4], weight float32 [T, 4]); unused taps have index 0 and weight 0.
"""
from __future__ import annotations

import numpy as np

from mmjax.models import anyres

TAPS = 4
Taps = tuple[np.ndarray, np.ndarray]


def exact(indices: np.ndarray) -> Taps:
  """Taps that copy bank rows: indices [T] -> ([T, 4], [T, 4]) with weight 1 on the first tap."""
  indices = np.asarray(indices, np.int64).reshape(-1)
  index = np.zeros((len(indices), TAPS), np.int32)
  weight = np.zeros((len(indices), TAPS), np.float32)
  index[:, 0], weight[:, 0] = indices, 1.0
  return index, weight


def concat(*taps: Taps) -> Taps:
  return np.concatenate([t[0] for t in taps]), np.concatenate([t[1] for t in taps])


def crop_cells(crop: int, side: int) -> np.ndarray:
  """Bank rows of crop `crop`'s feature cells, as a [side, side] map (row-major)."""
  return crop * side * side + np.arange(side * side).reshape(side, side)


def linear_weights(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """1-D bilinear resampling as torch `interpolate(align_corners=False)` and `jax.image.resize(antialias=False)`.

  Output i samples the input at x = (i + 0.5) * size_in / size_out - 0.5, clamped to [0, size_in - 1], between
  cells lo = floor(x) and hi = min(lo + 1, size_in - 1). Returns (lo [size_out], hi [size_out], frac [size_out])
  with weights 1 - frac on lo and frac on hi.
  """
  x = np.clip((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0, size_in - 1)
  lo = np.floor(x).astype(np.int64)
  return lo, np.minimum(lo + 1, size_in - 1), x - lo


def resize_taps(cells: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """Bilinear resize of a [h, w] map of bank rows to `size` (h', w'): index int [h', w', 4], weight [h', w', 4]."""
  r_lo, r_hi, r_frac = linear_weights(cells.shape[0], size[0])
  c_lo, c_hi, c_frac = linear_weights(cells.shape[1], size[1])
  index = np.stack([cells[np.ix_(r_lo, c_lo)], cells[np.ix_(r_lo, c_hi)],
                    cells[np.ix_(r_hi, c_lo)], cells[np.ix_(r_hi, c_hi)]], axis=-1)
  rf, cf = r_frac[:, None], c_frac[None, :]
  weight = np.stack([(1 - rf) * (1 - cf), (1 - rf) * cf, rf * (1 - cf), rf * cf], axis=-1)
  return index, weight


def _with_newlines(index: np.ndarray, weight: np.ndarray, newline: int) -> Taps:
  """[h, w, 4] map taps -> [h * (w + 1), 4] tokens, a newline after each row."""
  h = index.shape[0]
  nl_index, nl_weight = exact(np.full(h, newline))
  index = np.concatenate([index, nl_index[:, None]], axis=1).reshape(-1, TAPS)
  weight = np.concatenate([weight, nl_weight[:, None]], axis=1).reshape(-1, TAPS)
  return index.astype(np.int32), weight.astype(np.float32)


def anyres_taps(layout: anyres.AnyresLayout, first_crop: int, newline: int) -> Taps:
  """An AnyRes image whose crops (base, then tiles row-major) sit at bank crops first_crop, first_crop + 1, ...

  Tokens as `anyres.pack_anyres`: the base crop's cells, then the stitched tile map unpadded to
  layout.rows_kept x layout.cols_kept, resized to layout.reduced when set, with a newline after each row.
  """
  side, (rows, cols) = layout.side, layout.grid
  tiles = [crop_cells(first_crop + 1 + r * cols + c, side) for r in range(rows) for c in range(cols)]
  stitched = np.block([[tiles[r * cols + c] for c in range(cols)] for r in range(rows)])
  kept = stitched[slice(*layout.rows_kept), slice(*layout.cols_kept)]
  if layout.reduced is None:
    index, weight = exact(kept)
    index = index.reshape(*kept.shape, TAPS)
    weight = weight.reshape(*kept.shape, TAPS)
  else:
    index, weight = resize_taps(kept, layout.reduced)
  return concat(exact(crop_cells(first_crop, side)), _with_newlines(index, weight, newline))


def single_taps(crop: int, side: int, newline: int) -> Taps:
  """An image of a multi-image sample: its crop's side^2 cells and one newline (`anyres.pack_single`)."""
  return exact(np.append(crop_cells(crop, side).reshape(-1), newline))


def flat_taps(crop: int, side: int) -> Taps:
  """One crop's side^2 cells without a newline (LLaVA-NeXT `mm_patch_merge_type=flat`, stage 1)."""
  return exact(crop_cells(crop, side))


def video_taps(first_crop: int, num_frames: int, side: int, newline: int) -> Taps:
  """Frames at bank crops first_crop.. each pooled 2x2 bilinearly to ceil(side / 2)^2, then one newline
  (`anyres.pack_video`)."""
  pooled = (anyres.pooled_side(side),) * 2
  frames = [resize_taps(crop_cells(first_crop + f, side), pooled) for f in range(num_frames)]
  index = np.concatenate([i.reshape(-1, TAPS) for i, _ in frames]).astype(np.int32)
  weight = np.concatenate([w.reshape(-1, TAPS) for _, w in frames]).astype(np.float32)
  return concat((index, weight), exact([newline]))
