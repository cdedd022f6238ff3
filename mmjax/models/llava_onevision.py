"""LLaVA-OneVision (HF `LlavaOnevisionForConditionalGeneration`): SigLIP tower, 2-layer GELU projector,
`image_newline`, AnyRes-Max-9 / multi-image / video token packing, and a Qwen2 decoder.

Parameter tree:
  vision_tower/...            mmjax.models.siglip.SiglipVisionModel
  multi_modal_projector/linear_1/{kernel [Ev, E], bias}, linear_2/{kernel [E, E], bias}
  image_newline [E]
  language_model/...          mmjax.models.qwen2.Qwen2ForCausalLM

Visual features replace the embeddings of the `<image>` / `<video>` placeholder tokens, in order (`merge_features`:
a cumulative-index gather, so input_ids may be traced). The number and shapes of the features follow from the
array shapes and from image_sizes and batch_num_images, which must therefore be concrete: under jax.jit close over
them or make them static arguments; each distinct set of image sizes compiles once.
"""
import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import chex
import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from mmjax.models import anyres
from mmjax.models.kv_cache import KVCache
from mmjax.models.llava_processor import LlavaOnevisionProcessor
from mmjax.models.qwen2 import CausalLMOutput, Qwen2Config, Qwen2ForCausalLM
from mmjax.models.siglip import HF_ACTIVATIONS, SiglipVisionConfig, SiglipVisionModel
from mmjax.nn.linear import Dense
from mmjax.nn.mlp import get_activation

__all__ = ['LlavaOnevisionConfig', 'LlavaOnevisionForConditionalGeneration', 'LlavaOnevisionProcessor',
           'merge_features']


@dataclasses.dataclass(frozen=True)
class LlavaOnevisionConfig:
  """The fields of HF `LlavaOnevisionConfig` that change the computation.

  vision_feature_layer indexes HF `hidden_states` of the tower (-1: the last layer's output before the post-LN;
  OneVision checkpoints have the 27th SigLIP layer removed already). image_grid_pinpoints are (height, width).
  tie_word_embeddings lives in text_config.
  """
  vision_config: SiglipVisionConfig
  text_config: Qwen2Config
  image_token_index: int = 151646
  video_token_index: int = 151647
  projector_hidden_act: str = 'gelu'
  vision_feature_layer: int = -1
  multimodal_projector_bias: bool = True
  image_grid_pinpoints: tuple[tuple[int, int], ...] = anyres.DEFAULT_PINPOINTS
  vision_aspect_ratio: str = 'anyres_max_9'

  def __post_init__(self):
    if self.projector_hidden_act not in HF_ACTIVATIONS:
      raise ValueError(f'Unsupported projector_hidden_act {self.projector_hidden_act!r}; choose one of '
                       f'{sorted(HF_ACTIVATIONS)}.')
    anyres.parse_max_crops(self.vision_aspect_ratio)
    num_layers = self.vision_config.num_hidden_layers
    if not isinstance(self.vision_feature_layer, int) or not -num_layers - 1 <= self.vision_feature_layer <= num_layers:
      raise ValueError(f'vision_feature_layer must be one int in [{-num_layers - 1}, {num_layers}] (a list of '
                       f'layers is not supported), got {self.vision_feature_layer!r}.')

  @property
  def side(self) -> int:
    """Feature cells per crop side (image_size / patch_size)."""
    return self.vision_config.image_size // self.vision_config.patch_size

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
    missing = [k for k in ('vision_config', 'text_config') if k not in d]
    if missing:
      raise ValueError(f'LLaVA-OneVision config.json lacks {missing}.')
    if d.get('vision_feature_select_strategy', 'full') != 'full':
      raise ValueError(f'Unsupported vision_feature_select_strategy {d["vision_feature_select_strategy"]!r}: '
                       'SigLIP has no CLS token, only "full" is implemented.')
    text = dict(d['text_config'])
    # transformers ties the output embeddings when either config asks for it.
    text['tie_word_embeddings'] = bool(d.get('tie_word_embeddings') or text.get('tie_word_embeddings'))
    fields = dict(
        image_token_index=d.get('image_token_index', d.get('image_token_id')),
        video_token_index=d.get('video_token_index', d.get('video_token_id')),
        projector_hidden_act=d.get('projector_hidden_act'), vision_feature_layer=d.get('vision_feature_layer'),
        multimodal_projector_bias=d.get('multimodal_projector_bias'),
        image_grid_pinpoints=d.get('image_grid_pinpoints') and tuple(tuple(p) for p in d['image_grid_pinpoints']),
        vision_aspect_ratio=d.get('vision_aspect_ratio'))
    return cls(vision_config=SiglipVisionConfig.from_hf_dict(d['vision_config']),
               text_config=Qwen2Config.from_hf_dict(text), **{k: v for k, v in fields.items() if v is not None})

  def to_hf_dict(self) -> dict[str, Any]:
    """An HF config.json dict that transformers loads as LlavaOnevisionConfig."""
    return {'model_type': 'llava_onevision', 'architectures': ['LlavaOnevisionForConditionalGeneration'],
            'vision_config': self.vision_config.to_hf_dict(), 'text_config': self.text_config.to_hf_dict(),
            'image_token_index': self.image_token_index, 'video_token_index': self.video_token_index,
            'projector_hidden_act': self.projector_hidden_act, 'vision_feature_layer': self.vision_feature_layer,
            'vision_feature_select_strategy': 'full', 'multimodal_projector_bias': self.multimodal_projector_bias,
            'image_grid_pinpoints': [list(p) for p in self.image_grid_pinpoints],
            'vision_aspect_ratio': self.vision_aspect_ratio,
            'tie_word_embeddings': self.text_config.tie_word_embeddings}


class LlavaOnevisionProjector(nn.Module):
  """linear_2(act(linear_1(x))): vision features [..., Ev] -> text embeddings [..., E] (exact GELU by default)."""
  hidden_size: int
  activation: str = 'gelu'
  use_bias: bool = True
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = functools.partial(Dense, self.hidden_size, use_bias=self.use_bias, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    h = get_activation(self.activation)(dense(('embed', 'mlp'), name='linear_1')(x))
    return dense(('mlp', 'embed'), name='linear_2')(h)


def merge_features(embeds: jax.Array, mask: jax.Array, features: jax.Array, kind: str = 'image') -> jax.Array:
  """Writes features [T, E], in order, at the True positions of mask [B, S] (row-major over the whole batch).

  The k-th True position (counted by a cumulative sum) takes features[k]: a gather plus a select, so it traces
  with static shapes (torch's masked_scatter). When mask is concrete, a count other than T raises ValueError;
  under jit the caller guarantees it (the processor writes exactly T placeholders), since a traced count cannot
  be checked.
  """
  chex.assert_rank([embeds, mask, features], [3, 2, 2])
  chex.assert_equal_shape_prefix([embeds, mask], 2)
  chex.assert_axis_dimension(features, 1, embeds.shape[-1])
  if not isinstance(mask, jax.core.Tracer):
    count = int(mask.sum())
    if count != features.shape[0]:
      raise ValueError(f'{kind.capitalize()} features and {kind} tokens do not match: the input has {count} '
                       f'{kind} tokens, the {kind}s give {features.shape[0]} features.')
  batch, length, dim = embeds.shape
  flat = mask.reshape(-1)
  index = jnp.clip(jnp.cumsum(flat) - 1, 0, features.shape[0] - 1)
  merged = jnp.where(flat[:, None], features.astype(embeds.dtype)[index], embeds.reshape(-1, dim))
  return merged.reshape(batch, length, dim)


def _static_ints(value: Any, name: str) -> np.ndarray:
  """A concrete int array from a numpy array, tuple or list; ValueError for traced values."""
  try:
    return np.asarray(value, dtype=np.int64)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    raise ValueError(f'{name} must be concrete (numpy or nested tuples), not traced: it fixes the number of '
                     'crops and tokens. Under jax.jit, close over it or pass it as a static argument.') from None


def language_model_of(module: 'LlavaOnevisionForConditionalGeneration') -> Qwen2ForCausalLM:
  """The Qwen2 decoder a LLaVA-OneVision module nests as `language_model` (params['language_model']), with the
  module's dtypes, remat and attention implementation; unbound when called outside the module's setup."""
  return Qwen2ForCausalLM(module.config.text_config, dtype=module.dtype, param_dtype=module.param_dtype,
                          remat=module.remat, attn_impl=module.attn_impl)


class LlavaOnevisionForConditionalGeneration(nn.Module):
  """Token ids + images / videos -> next-token logits (optionally with a Qwen2 KV cache).

  dtype is the compute dtype (None: the parameter dtype), param_dtype the storage dtype; remat and attn_impl are
  passed to the tower and the decoder.
  """
  config: LlavaOnevisionConfig
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32
  remat: bool = False
  attn_impl: str = 'auto'

  def setup(self):
    cfg, kwargs = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.vision_tower = SiglipVisionModel(cfg.vision_config, remat=self.remat, attn_impl=self.attn_impl, **kwargs)
    self.multi_modal_projector = LlavaOnevisionProjector(
        cfg.text_config.hidden_size, HF_ACTIVATIONS[cfg.projector_hidden_act], cfg.multimodal_projector_bias,
        **kwargs)
    hidden = cfg.text_config.hidden_size
    self.image_newline = self.param(
        'image_newline', nn.with_logical_partitioning(nn.initializers.normal(hidden ** -0.5), ('embed',)),
        (hidden,), self.param_dtype)
    self.language_model = language_model_of(self)

  def __call__(self, input_ids: jax.Array | None = None, *, attention_mask: jax.Array | None = None,
               positions: jax.Array | None = None, pixel_values: jax.Array | None = None,
               image_sizes: Any = None, batch_num_images: Any = None, pixel_values_videos: jax.Array | None = None,
               inputs_embeds: jax.Array | None = None, cache: KVCache | None = None) -> CausalLMOutput:
    """Runs the decoder on input_ids [B, S] with the visual features merged in, or on inputs_embeds [B, S, E].

    Image and video arguments are those of `embed`; attention_mask, positions and cache are passed to
    `Qwen2ForCausalLM` (prefill from `embed`'s output, then decode steps with input_ids [B, 1]).

    Returns:
      CausalLMOutput(logits float32 [B, S, V], cache: the updated KVCache or None).
    """
    if inputs_embeds is None:
      if input_ids is None:
        raise ValueError('Pass input_ids or inputs_embeds.')
      inputs_embeds = self.embed(input_ids, pixel_values=pixel_values, image_sizes=image_sizes,
                                 batch_num_images=batch_num_images, pixel_values_videos=pixel_values_videos)
    elif input_ids is not None or pixel_values is not None or pixel_values_videos is not None:
      raise ValueError('inputs_embeds already holds the visual features: pass no input_ids, pixel_values or '
                       'pixel_values_videos with it.')
    return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, positions=positions,
                               cache=cache)

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
      size = cfg.vision_config.image_size
      self._crop_features(jnp.zeros((1, size, size, cfg.vision_config.num_channels), embeds.dtype))
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
    features = self._crop_features(crops)
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
    features = self._crop_features(einops.rearrange(pixel_values_videos, 'v f h w c -> (v f) h w c'))
    return anyres.pack_video(einops.rearrange(features, '(v f) t e -> v f t e', v=pixel_values_videos.shape[0]),
                             self.config.side, self.image_newline)

  def _crop_features(self, crops: jax.Array) -> jax.Array:
    """Projected tower features [N, side^2, E] of crops [N, H, W, 3]."""
    hidden = self.vision_tower(crops, feature_layer=self.config.vision_feature_layer)
    return self.multi_modal_projector(hidden)

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

