"""LLaVA-OneVision (HF `LlavaOnevisionForConditionalGeneration`): LLaVA (mmjax.models.llava: a registered tower,
SigLIP in the released checkpoints, a 2-layer GELU projector and a decoder of the family, Qwen2 in the released
checkpoints) with `image_newline` and AnyRes-Max-9 / multi-image / video token packing.

Parameter tree: LLaVA's (vision_tower, multi_modal_projector, language_model) plus image_newline [E].

Visual features replace the embeddings of the `<image>` / `<video>` placeholder tokens, in order (`merge_features`:
a cumulative-index gather, so input_ids may be traced). The number and shapes of the features follow from the
array shapes and from image_sizes and batch_num_images, which must therefore be concrete: under jax.jit close over
them or make them static arguments; each distinct set of image sizes compiles once. Training uses LLaVA's
fixed-shape taps forward instead (`embed_taps`, taps from mmjax.models.visual_taps), one compilation per run.
"""
import dataclasses
from collections.abc import Mapping
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from mmjax.models import anyres
from mmjax.models.llava import (
  LlavaConfig,
  LlavaForConditionalGeneration,
  common_fields,
  common_hf_dict,
  language_model_of,
  merge_features,
)
from mmjax.models.llava_processor import LlavaOnevisionProcessor
from mmjax.models.qwen2 import Qwen2Config
from mmjax.models.siglip import SiglipVisionConfig

__all__ = ['LlavaOnevisionConfig', 'LlavaOnevisionForConditionalGeneration', 'LlavaOnevisionProcessor',
           'language_model_of', 'merge_features']


@dataclasses.dataclass(frozen=True)
class LlavaOnevisionConfig(LlavaConfig):
  """The fields of HF `LlavaOnevisionConfig` that change the computation (LlavaConfig's, with OneVision's defaults,
  plus the video token and the AnyRes grid).

  vision_feature_layer indexes HF `hidden_states` of the tower (-1: the last layer's output before the post-LN;
  OneVision checkpoints have the 27th SigLIP layer removed already). image_grid_pinpoints are (height, width).
  """
  vision_config: SiglipVisionConfig
  text_config: Qwen2Config
  image_token_index: int = 151646
  video_token_index: int = 151647
  vision_feature_layer: int = -1
  vision_feature_select_strategy: str = 'full'
  image_grid_pinpoints: tuple[tuple[int, int], ...] = anyres.DEFAULT_PINPOINTS
  vision_aspect_ratio: str = 'anyres_max_9'

  def __post_init__(self):
    super().__post_init__()
    anyres.parse_max_crops(self.vision_aspect_ratio)

  @property
  def max_crops(self) -> int:
    return anyres.parse_max_crops(self.vision_aspect_ratio)

  def image_layout(self, image_size: anyres.Size) -> anyres.AnyresLayout:
    """The AnyRes layout of an image of original size (H, W)."""
    return anyres.anyres_layout(image_size, self.image_grid_pinpoints, self.vision_config.image_size, self.side,
                                self.max_crops)

  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any]) -> 'LlavaOnevisionConfig':
    """Reads an HF `llava_onevision` config.json dict (image/video token fields as *_index or *_id)."""
    fields = dict(
        video_token_index=d.get('video_token_index', d.get('video_token_id')),
        image_grid_pinpoints=d.get('image_grid_pinpoints') and tuple(tuple(p) for p in d['image_grid_pinpoints']),
        vision_aspect_ratio=d.get('vision_aspect_ratio'))
    return cls(**common_fields(d, default_tower='siglip_vision_model', default_decoder='qwen2'),
               **{k: v for k, v in fields.items() if v is not None})

  def to_hf_dict(self) -> dict[str, Any]:
    """An HF config.json dict that transformers loads as LlavaOnevisionConfig."""
    return {'model_type': 'llava_onevision', 'architectures': ['LlavaOnevisionForConditionalGeneration'],
            **common_hf_dict(self), 'video_token_index': self.video_token_index,
            'image_grid_pinpoints': [list(p) for p in self.image_grid_pinpoints],
            'vision_aspect_ratio': self.vision_aspect_ratio}


def _static_ints(value: Any, name: str) -> np.ndarray:
  """A concrete int array from a numpy array, tuple or list; ValueError for traced values."""
  try:
    return np.asarray(value, dtype=np.int64)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    raise ValueError(f'{name} must be concrete (numpy or nested tuples), not traced: it fixes the number of '
                     'crops and tokens. Under jax.jit, close over it or pass it as a static argument.') from None


class LlavaOnevisionForConditionalGeneration(LlavaForConditionalGeneration):
  """Token ids + images / videos -> next-token logits (optionally with a KV cache); fields as LLaVA's.

  `__call__` is LLaVA's: `embed`'s image and video arguments as keywords, or the training forward (pixel_values
  [B, K, H, W, 3], tap_index, tap_weight) whose bank ends with image_newline.
  """
  config: LlavaOnevisionConfig

  def setup(self):
    super().setup()
    hidden = self.config.text_config.hidden_size
    self.image_newline = self.param(
        'image_newline', nn.with_logical_partitioning(nn.initializers.normal(hidden ** -0.5), ('embed',)),
        (hidden,), self.param_dtype)

  def bank_extras(self, dtype: DTypeLike) -> jax.Array:
    """The taps bank's last row is image_newline (index K * side^2)."""
    return self.image_newline[None].astype(dtype)

  def visual_token_mask(self, input_ids: jax.Array) -> jax.Array:
    cfg = self.config
    return (input_ids == cfg.image_token_index) | (input_ids == cfg.video_token_index)

  def embed(self, input_ids: jax.Array, *, pixel_values: jax.Array | None = None, image_sizes: Any = None,
            batch_num_images: Any = None, pixel_values_videos: jax.Array | None = None) -> jax.Array:
    """Token embeddings [B, S, E] with image and video features at their placeholder tokens.

    Args:
      input_ids: int [B, S], each image / video placeholder expanded to its token count (the processor's job).
      pixel_values: [N, crops, H, W, 3] channels-last normalised crops of the N images of the batch, in order,
        zero-padded along crops (HF layout); with image_sizes [N, 2] original (height, width) per image.
      batch_num_images: images per sample [B'] (HF); images of a sample with more than one use one crop (729 + 1
        tokens), others AnyRes. None: every image is AnyRes. image_sizes and batch_num_images must be concrete.
      pixel_values_videos: [V, F, H, W, 3] frames of the V videos of the batch, in order.
    """
    cfg = self.config
    embeds = self.language_model.embed(input_ids)
    if pixel_values is not None:
      features = self.image_features(pixel_values, image_sizes, batch_num_images)
      embeds = merge_features(embeds, input_ids == cfg.image_token_index, features, 'image')
    if pixel_values_videos is not None:
      features = self.video_features(pixel_values_videos).reshape(-1, cfg.text_config.hidden_size)
      embeds = merge_features(embeds, input_ids == cfg.video_token_index, features, 'video')
    if self.is_initializing() and pixel_values is None and pixel_values_videos is None:
      self._init_tower(embeds.dtype)
    return nn.with_logical_constraint(embeds, ('batch', 'length', 'embed'))

  def image_features(self, pixel_values: jax.Array, image_sizes: Any, batch_num_images: Any = None) -> jax.Array:
    """Packed image tokens [T, E] of all images, in order (arguments as in `embed`)."""
    cfg = self.config
    size = cfg.vision_config.image_size
    if pixel_values.ndim != 5 or pixel_values.shape[2:] != (size, size, cfg.vision_config.num_channels):
      raise ValueError(f'pixel_values must be [images, crops, {size}, {size}, {cfg.vision_config.num_channels}] '
                       f'(channels last), got shape {pixel_values.shape}.')
    num_images = pixel_values.shape[0]
    sizes = _static_ints(image_sizes, 'image_sizes')
    if sizes.shape != (num_images, 2):
      raise ValueError(f'image_sizes must be [{num_images}, 2] (height, width), got shape {sizes.shape}.')
    layouts = [None if multi else cfg.image_layout(tuple(s)) for multi, s in
               zip(self._single_crop(batch_num_images, num_images), sizes.tolist())]
    counts = [1 if layout is None else layout.num_crops for layout in layouts]
    if max(counts) > pixel_values.shape[1]:
      raise ValueError(f'pixel_values holds {pixel_values.shape[1]} crops per image; image_sizes need '
                       f'{max(counts)} (image {int(np.argmax(counts))}).')
    crops = jnp.concatenate([pixel_values[i, :n] for i, n in enumerate(counts)])
    features = self.crop_features(crops)
    starts = np.cumsum([0] + counts)
    newline = self.image_newline
    return jnp.concatenate([
        anyres.pack_single(features[start], newline) if layout is None
        else anyres.pack_anyres(features[start:start + layout.num_crops], layout, newline)
        for start, layout in zip(starts, layouts)])

  def video_features(self, pixel_values_videos: jax.Array) -> jax.Array:
    """Video tokens [V, F * pooled^2 + 1, E] from frames [V, F, H, W, 3]: pooled 2x2, one newline per video."""
    if pixel_values_videos.ndim != 5:
      raise ValueError(f'pixel_values_videos must be [videos, frames, H, W, 3], got {pixel_values_videos.shape}.')
    features = self.crop_features(einops.rearrange(pixel_values_videos, 'v f h w c -> (v f) h w c'))
    return anyres.pack_video(einops.rearrange(features, '(v f) t e -> v f t e', v=pixel_values_videos.shape[0]),
                             self.config.side, self.image_newline)

  @staticmethod
  def _single_crop(batch_num_images: Any, num_images: int) -> list[bool]:
    """Per image: True when its sample holds several images (HF `need_patching` negated)."""
    if batch_num_images is None:
      return [False] * num_images
    per_sample = _static_ints(batch_num_images, 'batch_num_images').reshape(-1).tolist()
    if sum(per_sample) != num_images:
      raise ValueError(f'batch_num_images {per_sample} sums to {sum(per_sample)}, but pixel_values holds '
                       f'{num_images} images.')
    return [n > 1 for n in per_sample for _ in range(n)]

