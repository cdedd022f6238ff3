"""Shape-stable LLaVA-OneVision image features: bucketed crops and a traced packing table, so that one compiled
prefill serves every mix of image counts and image sizes within its buckets.

The model's `image_features` packs each image's crop features by the image's AnyRes layout, which follows from
its size: as static arguments, image sizes and images per prompt compile a new prefill for almost every batch of a
benchmark. Here the host turns the layouts into a table instead. Every visual token is a weighted sum of at most
TAPS source vectors, source 0 being `image_newline` and source 1 + c * side^2 + m cell m of crop c: that covers the
base crop, the unpadded tile grid, its bilinear reduction (separable, two taps per axis, weights taken from the
same `jax.image.resize` the model uses), single-crop images and the newline column. The crops of all images are
concatenated and padded to a bucketed count, the table to a bucketed token count. Padding tokens (weight 0) come
after the last real one, where no placeholder reads them: `merge_features` gives the k-th placeholder the k-th
token. So the compiled shapes depend only on (crop bucket, token bucket).
"""
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.generate.batching import bucket
from mmjax.models.anyres import AnyresLayout

TAPS = 4
NEWLINE = -1  # the newline's index in a per-image table (source 0 of the batch table)


def pack_images(pixel_values: np.ndarray, layouts: Sequence[AnyresLayout | None], side: int
                ) -> dict[str, np.ndarray]:
  """The bucketed inputs of `image_tokens` for the images of a batch, in order.

  pixel_values: [N, crops, H, W, 3] as the processor returns them (crops zero-padded per image); layouts: per
  image its AnyRes layout, or None for a single-crop image (of a multi-image prompt). Returns crops
  [bucket(C), H, W, 3] (the C real crops first), taps int32 [bucket(T), TAPS] and tap_weights float32 [bucket(T),
  TAPS] for the T visual tokens.
  """
  pixels = np.asarray(pixel_values)
  counts = [1 if layout is None else layout.num_crops for layout in layouts]
  real = np.concatenate([pixels[i, :n] for i, n in enumerate(counts)])
  crops = np.zeros((bucket(len(real), minimum=1),) + real.shape[1:], real.dtype)
  crops[:len(real)] = real
  cells, first, taps, weights = side * side, 0, [], []
  for layout, n in zip(layouts, counts):
    index, weight = _image_table(layout, side)
    taps.append(np.where(index == NEWLINE, 0, index + 1 + first * cells))
    weights.append(weight)
    first += n
  taps, weights = np.concatenate(taps), np.concatenate(weights)
  rows = bucket(len(taps))
  return {'crops': crops, 'taps': np.pad(taps, ((0, rows - len(taps)), (0, 0))).astype(np.int32),
          'tap_weights': np.pad(weights, ((0, rows - len(weights)), (0, 0))).astype(np.float32)}


def image_tokens(crop_features: jax.Array, newline: jax.Array, taps: jax.Array, tap_weights: jax.Array
                 ) -> jax.Array:
  """Visual tokens [T, E] from crop features [C, side^2, E], image_newline [E] and the table of `pack_images`."""
  dim = crop_features.shape[-1]
  source = jnp.concatenate([newline[None].astype(crop_features.dtype), crop_features.reshape(-1, dim)])
  return jnp.einsum('tk,tke->te', tap_weights.astype(crop_features.dtype), source[taps])


@functools.lru_cache(maxsize=4096)
def _image_table(layout: AnyresLayout | None, side: int) -> tuple[np.ndarray, np.ndarray]:
  """(taps int64 [T, TAPS], weights float32 [T, TAPS]) of one image: cell c * side^2 + m of its own crops, or
  NEWLINE; unused taps point at NEWLINE with weight 0. The rows follow `anyres.pack_single` / `pack_anyres`."""
  cells = side * side

  def single(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    taps = np.full((len(index), TAPS), NEWLINE, np.int64)
    weights = np.zeros((len(index), TAPS), np.float32)
    taps[:, 0], weights[:, 0] = index, 1.0
    return taps, weights

  if layout is None:
    return single(np.append(np.arange(cells), NEWLINE))
  cols = layout.grid[1]
  ys, xs = np.arange(*layout.rows_kept), np.arange(*layout.cols_kept)
  if layout.reduced is None:
    y_index, y_weight = np.arange(len(ys))[:, None], np.ones((len(ys), 1), np.float32)
    x_index, x_weight = np.arange(len(xs))[:, None], np.ones((len(xs), 1), np.float32)
  else:
    y_index, y_weight = _bilinear_taps(len(ys), layout.reduced[0])
    x_index, x_weight = _bilinear_taps(len(xs), layout.reduced[1])
  y, x = ys[y_index], xs[x_index]  # [h', a], [w', b] map coordinates
  tile = (y[:, None, :, None] // side) * cols + x[None, :, None, :] // side
  cell = (1 + tile) * cells + (y[:, None, :, None] % side) * side + x[None, :, None, :] % side  # [h', w', a, b]
  weight = y_weight[:, None, :, None] * x_weight[None, :, None, :]
  h, w = cell.shape[:2]
  grid_taps = np.full((h, w + 1, TAPS), NEWLINE, np.int64)
  grid_weights = np.zeros((h, w + 1, TAPS), np.float32)
  grid_taps[:, :w, :cell.shape[2] * cell.shape[3]] = cell.reshape(h, w, -1)
  grid_weights[:, :w, :cell.shape[2] * cell.shape[3]] = weight.reshape(h, w, -1)
  grid_weights[:, w, 0] = 1.0  # the newline column
  base_taps, base_weights = single(np.arange(cells))
  return (np.concatenate([base_taps, grid_taps.reshape(-1, TAPS)]),
          np.concatenate([base_weights, grid_weights.reshape(-1, TAPS)]))


def _bilinear_taps(size: int, reduced: int) -> tuple[np.ndarray, np.ndarray]:
  """(index int [reduced, 2], weight float32 [reduced, 2]): the two inputs of each output of a bilinear resize of
  `size` cells to `reduced`, as `anyres` resizes (torch's bilinear, align_corners=False, no antialiasing)."""
  probe = np.eye(size, dtype=np.float32)[:, None, :]  # [size, 1, size]: channel k is one-hot at cell k
  matrix = np.asarray(jax.image.resize(probe, (reduced, 1, size), 'bilinear', antialias=False))[:, 0, :]
  index = np.sort(np.argsort(-matrix, axis=1)[:, :2], axis=1)
  weight = np.take_along_axis(matrix, index, axis=1)
  # Bilinear downsampling without antialiasing reads at most two neighbours per output.
  np.testing.assert_allclose(weight.sum(1), matrix.sum(1), atol=1e-6)
  return index, weight
