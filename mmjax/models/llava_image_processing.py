"""LLaVA-OneVision image and video preprocessing in NumPy/PIL, channels-last.

Images follow transformers' LlavaOnevisionImageProcessor (the PIL backend, `LlavaOnevisionImageProcessorPil`):
  - AnyRes (an image alone in its sample): the base crop is the whole image resized (stretched) to the crop size;
    the tiles come from the image resized, aspect kept, into the best grid resolution, pasted centred on black
    (pad 0 before normalisation) and cut row-major.
  - single crop (an image of a multi-image sample): padded to a square with the mean colour int(255 * mean),
    centred, then resized to the crop size.
  - every crop: uint8 -> float32 x * rescale_factor, then (x - mean) / std.
Resizing is PIL's (bicubic by default) on uint8 RGB, as in transformers. Videos: every frame is resized to the crop
size, rescaled and normalised the same way (transformers' video processor does this with torchvision, whose
bicubic resize differs slightly from PIL's; frames already at the crop size give identical values).
"""
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from mmjax.models import anyres

ImageInput = Image.Image | np.ndarray | str | os.PathLike


@dataclasses.dataclass(frozen=True)
class ImageProcessingConfig:
  """The fields of an HF `preprocessor_config.json` that change the pixels.

  crop_size is the square crop side in pixels (HF `size`); grid_pinpoints are (height, width); resample is a PIL
  resampling filter id (3 = bicubic).
  """
  crop_size: int = 384
  grid_pinpoints: tuple[tuple[int, int], ...] = anyres.DEFAULT_PINPOINTS
  image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
  image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
  rescale_factor: float = 1 / 255
  resample: int = int(Image.Resampling.BICUBIC)
  do_convert_rgb: bool = True

  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any], source: str = 'preprocessor_config.json') -> 'ImageProcessingConfig':
    """Reads an HF image processor config; ValueError naming `source` for settings this module does not implement."""
    problems = [f'{k}=false' for k in ('do_resize', 'do_rescale', 'do_normalize', 'do_pad') if d.get(k) is False]
    if d.get('do_center_crop'):
      problems.append('do_center_crop=true')
    size = d.get('size', {'height': cls.crop_size, 'width': cls.crop_size})
    side = size.get('shortest_edge') or size.get('height')
    if side is None or size.get('width', side) != side:
      problems.append(f'size {size} (only square crops)')
    if problems:
      raise ValueError(f'{source}: unsupported image processing settings: {", ".join(problems)}.')
    fields = dict(grid_pinpoints=d.get('image_grid_pinpoints') and tuple(tuple(p) for p in d['image_grid_pinpoints']),
                  image_mean=d.get('image_mean') and tuple(d['image_mean']),
                  image_std=d.get('image_std') and tuple(d['image_std']),
                  rescale_factor=d.get('rescale_factor'), resample=d.get('resample'),
                  do_convert_rgb=d.get('do_convert_rgb'))
    return cls(crop_size=side, **{k: v for k, v in fields.items() if v is not None})


def load_rgb(image: ImageInput, convert: bool = True) -> np.ndarray:
  """A PIL image, a uint8 [H, W, 3] array or an image file -> uint8 [H, W, 3] RGB.

  As transformers' convert_to_rgb, transparency is composited onto white. Raises ValueError naming an unreadable
  file, and for arrays that are not uint8 [H, W, 3].
  """
  if isinstance(image, (str, os.PathLike)):
    try:
      with Image.open(image) as opened:
        opened.load()
        return load_rgb(opened, convert)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
      raise ValueError(f'cannot read image file {os.fspath(image)}: {e}') from None
  if isinstance(image, np.ndarray):
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f'image arrays must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}.')
    return image
  if not isinstance(image, Image.Image):
    raise TypeError(f'images must be PIL images, uint8 arrays or file paths, got {type(image).__name__}.')
  if convert and ('A' in image.getbands() or image.info.get('transparency') is not None):
    rgba = image.convert('RGBA')
    image = Image.alpha_composite(Image.new('RGBA', rgba.size, (255, 255, 255, 255)), rgba)
  return np.asarray(image.convert('RGB'), dtype=np.uint8)


def _resize(image: np.ndarray, size: anyres.Size, resample: int) -> np.ndarray:
  """uint8 [H, W, 3] -> [h, w, 3] with PIL (a no-op at the same size, as in PIL)."""
  if image.shape[:2] == tuple(size):
    return image
  return np.asarray(Image.fromarray(image).resize((size[1], size[0]), resample=resample))


def _normalize(crops: np.ndarray, config: ImageProcessingConfig) -> np.ndarray:
  """uint8 [..., 3] -> float32, in transformers' order of operations and precisions."""
  x = (crops.astype(np.float64) * config.rescale_factor).astype(np.float32)
  return (x - np.asarray(config.image_mean, np.float32)) / np.asarray(config.image_std, np.float32)


def anyres_crops(image: np.ndarray, config: ImageProcessingConfig) -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 [1 + rows * cols, crop, crop, 3]: the base, then the tiles row-major."""
  side = config.crop_size
  target_h, target_w = anyres.select_best_resolution(image.shape[:2], config.grid_pinpoints)
  new_h, new_w = anyres.fit_size(image.shape[:2], (target_h, target_w))
  canvas = np.zeros((target_h, target_w, 3), np.uint8)
  top, left = (target_h - new_h) // 2, (target_w - new_w) // 2
  canvas[top:top + new_h, left:left + new_w] = _resize(image, (new_h, new_w), config.resample)
  tiles = [_resize(canvas[i:i + side, j:j + side], (side, side), config.resample)
           for i in range(0, target_h, side) for j in range(0, target_w, side)]
  return np.stack([_resize(image, (side, side), config.resample), *tiles])


def square_crop(image: np.ndarray, config: ImageProcessingConfig) -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 [1, crop, crop, 3]: padded to a square with the mean colour, then resized."""
  height, width = image.shape[:2]
  if height != width:
    square = np.empty((max(height, width),) * 2 + (3,), np.uint8)
    square[:] = [int(m * 255) for m in config.image_mean]
    top, left = (square.shape[0] - height) // 2, (square.shape[1] - width) // 2
    square[top:top + height, left:left + width] = image
    image = square
  return _resize(image, (config.crop_size,) * 2, config.resample)[None]


def preprocess_image(image: ImageInput, config: ImageProcessingConfig, *, single_crop: bool
                     ) -> tuple[np.ndarray, anyres.Size]:
  """One image -> (float32 crops [n, crop, crop, 3], original (height, width)); n = 1 with single_crop."""
  pixels = load_rgb(image, config.do_convert_rgb)
  crops = square_crop(pixels, config) if single_crop else anyres_crops(pixels, config)
  return _normalize(crops, config), pixels.shape[:2]


def preprocess_video(frames: np.ndarray | Sequence[ImageInput], config: ImageProcessingConfig) -> np.ndarray:
  """Frames (uint8 [F, H, W, 3] or a sequence of images) -> float32 [F, crop, crop, 3]."""
  frames = [load_rgb(f, config.do_convert_rgb) for f in frames]
  if not frames:
    raise ValueError('a video needs at least one frame.')
  side = config.crop_size
  return _normalize(np.stack([_resize(f, (side, side), config.resample) for f in frames]), config)
