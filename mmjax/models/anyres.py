"""LLaVA-OneVision visual token layout: AnyRes-Max-N tiling of one image, single-crop images and pooled video.

The layout is plain Python on static sizes, shared by the processor (which counts tokens) and the model (which packs
features); the packing functions are jnp. Sizes are (height, width) throughout, as in HF transformers, and feature
maps are channels-last [h, w, E]. A crop of `side` x `side` patches yields side^2 feature tokens (27^2 = 729 for
SigLIP-so400m/14 at 384 px).

An AnyRes image of original size (H, W) becomes 1 + rows * cols crops: the whole image stretched to one crop (the
base), then the tiles of the image resized to the best grid resolution. Its tokens are the base's side^2, then the
tile features stitched into a [rows * side, cols * side] map, unpadded back to the image's aspect ratio, reduced
bilinearly when larger than max_crops crops' worth, with `image_newline` after each row.
"""
import dataclasses
import math
import re
from collections.abc import Sequence

import chex
import einops
import jax
import jax.numpy as jnp

Size = tuple[int, int]
# transformers' default image_grid_pinpoints: 1..6 x 1..6 crops of 384 px, as (height, width).
DEFAULT_PINPOINTS = tuple((384 * i, 384 * j) for i in range(1, 7) for j in range(1, 7))


def parse_max_crops(vision_aspect_ratio: str) -> int:
  """'anyres_max_9' -> 9; ValueError for any other form (OneVision's token budget is max_crops * side^2)."""
  match = re.fullmatch(r'anyres_max_(\d+)', vision_aspect_ratio)
  if not match:
    raise ValueError(f'Unsupported vision_aspect_ratio {vision_aspect_ratio!r}; expected "anyres_max_<N>".')
  return int(match.group(1))


def select_best_resolution(image_size: Size, pinpoints: Sequence[Sequence[int]]) -> Size:
  """The (h, w) pinpoint that keeps the most of the image's pixels, then wastes the fewest (HF/LLaVA-NeXT rule)."""
  height, width = image_size
  best, best_effective, best_waste = None, 0, math.inf
  for h, w in pinpoints:
    scale = min(w / width, h / height)
    effective = min(int(width * scale) * int(height * scale), width * height)
    waste = w * h - effective
    if effective > best_effective or (effective == best_effective and waste < best_waste):
      best, best_effective, best_waste = (h, w), effective, waste
  if best is None:
    raise ValueError(f'No grid pinpoint fits image size {image_size}; pinpoints {list(pinpoints)}.')
  return best


def fit_size(image_size: Size, target: Size) -> Size:
  """The size of the image resized, aspect kept, to fit inside `target` (the larger side fills it; ceil, capped)."""
  height, width = image_size
  target_h, target_w = target
  scale_w, scale_h = target_w / width, target_h / height
  if scale_w < scale_h:
    return min(math.ceil(height * scale_w), target_h), target_w
  return target_h, min(math.ceil(width * scale_h), target_w)


@dataclasses.dataclass(frozen=True)
class AnyresLayout:
  """Where one AnyRes image's tokens come from, in feature-map cells.

  grid: (rows, cols) of tiles; the image has 1 + rows * cols crops (base first, then tiles row-major).
  side: feature cells per crop side.
  rows_kept, cols_kept: [start, stop) of the stitched [rows * side, cols * side] map kept after unpadding.
  reduced: the (h, w) the unpadded map is bilinearly resized to, or None when it is within budget.
  """
  grid: Size
  side: int
  rows_kept: Size
  cols_kept: Size
  reduced: Size | None

  @property
  def num_crops(self) -> int:
    return 1 + self.grid[0] * self.grid[1]

  @property
  def map_size(self) -> Size:
    """(h, w) of the packed feature map, before the newline column."""
    if self.reduced is not None:
      return self.reduced
    return self.rows_kept[1] - self.rows_kept[0], self.cols_kept[1] - self.cols_kept[0]

  @property
  def num_tokens(self) -> int:
    h, w = self.map_size
    return self.side ** 2 + h * (w + 1)


def anyres_layout(image_size: Size, pinpoints: Sequence[Sequence[int]], crop_size: int, side: int,
                  max_crops: int) -> AnyresLayout:
  """The layout of an image of original `image_size` (H, W) cut into `crop_size` px crops of side x side cells."""
  best_h, best_w = select_best_resolution(image_size, pinpoints)
  grid = (best_h // crop_size, best_w // crop_size)
  cur_h, cur_w = grid[0] * side, grid[1] * side
  height, width = image_size
  rows, cols = (0, cur_h), (0, cur_w)
  # HF unpad_image: the scaled side is rounded to 7 decimals before int() (transformers#35779).
  if width / height > cur_w / cur_h:
    pad = (cur_h - int(round(height * (cur_w / width), 7))) // 2
    rows = (pad, cur_h - pad)
  else:
    pad = (cur_w - int(round(width * (cur_h / height), 7))) // 2
    cols = (pad, cur_w - pad)
  h, w = rows[1] - rows[0], cols[1] - cols[0]
  ratio = math.sqrt(h * w / (max_crops * side ** 2))
  reduced = (int(h // ratio), int(w // ratio)) if ratio > 1.1 else None
  return AnyresLayout(grid, side, rows, cols, reduced)


def single_crop_tokens(side: int) -> int:
  """Tokens of an image of a multi-image sample: one crop plus one newline."""
  return side ** 2 + 1


def pooled_side(side: int) -> int:
  """Cells per side of a video frame after 2x2 bilinear pooling: ceil(side / 2) (27 -> 14)."""
  return math.ceil(side / 2)


def video_tokens(num_frames: int, side: int) -> int:
  """Tokens of a video: pooled_side^2 per frame plus one newline after the last frame (27 px side: F * 196 + 1)."""
  return num_frames * pooled_side(side) ** 2 + 1


def _bilinear(x: jax.Array, size: Size) -> jax.Array:
  """[h, w, E] or [N, h, w, E] -> size, as torch interpolate(mode='bilinear', align_corners=False).

  antialias=False: jax.image.resize blurs when it downsamples by default; torch's bilinear does not.
  """
  return jax.image.resize(x, (*x.shape[:-3], *size, x.shape[-1]), 'bilinear', antialias=False)


def pack_anyres(features: jax.Array, layout: AnyresLayout, newline: jax.Array) -> jax.Array:
  """features [num_crops, side^2, E] (base first) -> tokens [layout.num_tokens, E]."""
  side, (rows, cols) = layout.side, layout.grid
  if features.shape[:2] != (layout.num_crops, side * side):
    raise ValueError(f'AnyRes features must be [{layout.num_crops}, {side * side}, E], got {features.shape}.')
  dim = features.shape[-1]
  grid = einops.rearrange(features[1:], '(r c) (h w) e -> (r h) (c w) e', r=rows, c=cols, h=side, w=side)
  grid = grid[slice(*layout.rows_kept), slice(*layout.cols_kept)]
  if layout.reduced is not None:
    grid = _bilinear(grid, layout.reduced)
  column = jnp.broadcast_to(newline.astype(grid.dtype), (grid.shape[0], 1, dim))
  return jnp.concatenate([features[0], jnp.concatenate([grid, column], axis=1).reshape(-1, dim)])


def pack_single(features: jax.Array, newline: jax.Array) -> jax.Array:
  """features [side^2, E] of a multi-image sample's image -> tokens [side^2 + 1, E]."""
  return jnp.concatenate([features, newline[None].astype(features.dtype)])


def pack_video(features: jax.Array, side: int, newline: jax.Array) -> jax.Array:
  """features [V, F, side^2, E] -> tokens [V, video_tokens(F, side), E]: each frame pooled 2x2 (bilinear), the
  frames concatenated, one newline after the last frame of each video."""
  chex.assert_rank(features, 4)
  chex.assert_axis_dimension(features, 2, side * side)
  videos, frames, _, dim = features.shape
  pooled = _bilinear(einops.rearrange(features, 'v f (h w) e -> (v f) h w e', h=side), (pooled_side(side),) * 2)
  column = jnp.broadcast_to(newline.astype(features.dtype), (videos, 1, dim))
  return jnp.concatenate([einops.rearrange(pooled, '(v f) h w e -> v (f h w) e', v=videos), column], axis=1)
