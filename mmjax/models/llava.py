"""LLaVA over any vision tower and decoder (HF `LlavaForConditionalGeneration`; LLaVA-OneVision builds on it).

A registered vision tower (SigLIP, CLIP) encodes image crops, a 2-layer projector maps its features to the
decoder's width, and a decoder of the family (Qwen2, Llama) reads the text embeddings with the visual features
written at the image placeholder tokens. Parameter tree:

  vision_tower/...            the tower's own tree (mmjax.models.siglip / clip)
  multi_modal_projector/linear_1/{kernel [Ev, E], bias}, linear_2/{kernel [E, E], bias}
  language_model/...          mmjax.models.decoder.DecoderForCausalLM

Two forward paths produce the same tokens:
- `embed` (inference, HF semantics): each image is one crop [N, H, W, 3]; its features (the CLS token dropped for
  vision_feature_select_strategy='default') replace the placeholders in order. LLaVA-1.5's `pad` layout is this
  with the image padded to a square in its mean colour first (`llava_image_processing.square_crop`).
- `embed_taps` (training, fixed shapes): every visual token is a weighted sum of 4 rows of a per-example bank of
  crop features (mmjax.models.visual_taps computes the taps in the data pipeline), so any mix of layouts, image
  sizes and image counts compiles once. Every LLaVA experiment trains through it: pass tap_index and tap_weight
  to `__call__`.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmjax.models.clip import CLIPVisionConfig, CLIPVisionModel
from mmjax.models.decoder import CausalLMOutput, DecoderConfig, DecoderForCausalLM
from mmjax.models.kv_cache import KVCache
from mmjax.models.llama import LlamaConfig, LlamaForCausalLM
from mmjax.models.qwen2 import Qwen2Config, Qwen2ForCausalLM
from mmjax.models.siglip import HF_ACTIVATIONS, SiglipVisionConfig, SiglipVisionModel
from mmjax.nn.linear import Dense
from mmjax.nn.mlp import get_activation

__all__ = ['DECODERS', 'VISION_TOWERS', 'LlavaConfig', 'LlavaForConditionalGeneration', 'LlavaProjector',
           'merge_features', 'register_decoder', 'register_vision_tower']


@dataclasses.dataclass(frozen=True)
class Component:
  """A registered tower or decoder: its HF model_type, config class (with from_hf_dict) and module class."""
  model_type: str
  config_cls: type
  module_cls: type


# HF model_type -> component. A module class takes (config, dtype=, param_dtype=, attn_impl=) and, for towers,
# remat= (bool) and `__call__(pixels [N, H, W, C], feature_layer=k)` -> HF hidden_states[k] [N, T, Ev]; decoders
# take remat_policy= and are `DecoderForCausalLM`s.
VISION_TOWERS: dict[str, Component] = {}
DECODERS: dict[str, Component] = {}


def register_vision_tower(model_type: str, config_cls: type, module_cls: type) -> None:
  VISION_TOWERS[model_type] = Component(model_type, config_cls, module_cls)


def register_decoder(model_type: str, config_cls: type, module_cls: type) -> None:
  DECODERS[model_type] = Component(model_type, config_cls, module_cls)


register_vision_tower('siglip_vision_model', SiglipVisionConfig, SiglipVisionModel)
register_vision_tower('clip_vision_model', CLIPVisionConfig, CLIPVisionModel)
register_decoder('qwen2', Qwen2Config, Qwen2ForCausalLM)
register_decoder('llama', LlamaConfig, LlamaForCausalLM)


def _component(registry: dict[str, Component], config: Any, kind: str) -> Component:
  for component in registry.values():
    if type(config) is component.config_cls:
      return component
  raise ValueError(f'no {kind} is registered for {type(config).__name__}; registered: '
                   f'{[c.config_cls.__name__ for c in registry.values()]}.')


def read_component(registry: dict[str, Component], d: Mapping[str, Any], kind: str, default: str) -> Any:
  """The config of an HF sub-config dict (`vision_config` / `text_config`), picked by its model_type."""
  model_type = d.get('model_type', default)
  if model_type not in registry:
    raise ValueError(f'unsupported {kind} model_type {model_type!r}; registered: {sorted(registry)}.')
  return registry[model_type].config_cls.from_hf_dict(d)


def _check_common(config: LlavaConfig) -> None:
  if config.projector_hidden_act not in HF_ACTIVATIONS:
    raise ValueError(f'Unsupported projector_hidden_act {config.projector_hidden_act!r}; choose one of '
                     f'{sorted(HF_ACTIVATIONS)}.')
  if config.vision_feature_select_strategy not in ('default', 'full'):
    raise ValueError(f"vision_feature_select_strategy must be 'default' (drop the CLS token) or 'full', got "
                     f'{config.vision_feature_select_strategy!r}.')
  num_layers = config.vision_config.num_hidden_layers
  layer = config.vision_feature_layer
  if not isinstance(layer, int) or not -num_layers - 1 <= layer <= num_layers:
    raise ValueError(f'vision_feature_layer must be one int in [{-num_layers - 1}, {num_layers}] (a list of '
                     f'layers is not supported), got {layer!r}.')
  _component(VISION_TOWERS, config.vision_config, 'vision tower')
  _component(DECODERS, config.text_config, 'decoder')


@dataclasses.dataclass(frozen=True)
class LlavaConfig:
  """The fields of HF `LlavaConfig` that change the computation.

  vision_config: a registered tower config (SigLIP, CLIP); text_config: a decoder family config (Qwen2, Llama).
  vision_feature_layer indexes the tower's HF `hidden_states`; vision_feature_select_strategy 'default' drops the
  first (CLS) token of each crop, 'full' keeps every token. tie_word_embeddings lives in text_config.
  """
  vision_config: Any
  text_config: DecoderConfig
  image_token_index: int = 32000
  projector_hidden_act: str = 'gelu'
  vision_feature_layer: int = -2
  vision_feature_select_strategy: str = 'default'
  multimodal_projector_bias: bool = True

  def __post_init__(self):
    _check_common(self)

  @property
  def side(self) -> int:
    """Feature cells per crop side (image_size / patch_size)."""
    return self.vision_config.image_size // self.vision_config.patch_size

  @property
  def tokens_per_crop(self) -> int:
    return self.side ** 2

  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any]) -> LlavaConfig:
    """Reads an HF `llava` config.json dict (transformers 4.x and 5.x field names)."""
    return cls(**common_fields(d, default_tower='clip_vision_model', default_decoder='llama'))

  def to_hf_dict(self) -> dict[str, Any]:
    """An HF config.json dict that transformers loads as LlavaConfig."""
    return {'model_type': 'llava', 'architectures': ['LlavaForConditionalGeneration'], **common_hf_dict(self),
            'image_seq_length': self.tokens_per_crop}


def common_fields(d: Mapping[str, Any], *, default_tower: str, default_decoder: str) -> dict[str, Any]:
  """The LlavaConfig fields of an HF LLaVA-family config.json dict (the sub-configs through the registries)."""
  missing = [k for k in ('vision_config', 'text_config') if k not in d]
  if missing:
    raise ValueError(f'LLaVA config.json lacks {missing}.')
  text = dict(d['text_config'])
  # transformers ties the output embeddings when either config asks for it.
  text['tie_word_embeddings'] = bool(d.get('tie_word_embeddings') or text.get('tie_word_embeddings'))
  fields = dict(
      image_token_index=d.get('image_token_index', d.get('image_token_id')),
      projector_hidden_act=d.get('projector_hidden_act'), vision_feature_layer=d.get('vision_feature_layer'),
      vision_feature_select_strategy=d.get('vision_feature_select_strategy'),
      multimodal_projector_bias=d.get('multimodal_projector_bias'))
  return dict(vision_config=read_component(VISION_TOWERS, d['vision_config'], 'vision tower', default_tower),
              text_config=read_component(DECODERS, text, 'decoder', default_decoder),
              **{k: v for k, v in fields.items() if v is not None})


def common_hf_dict(config: LlavaConfig) -> dict[str, Any]:
  return {'vision_config': config.vision_config.to_hf_dict(), 'text_config': config.text_config.to_hf_dict(),
          'image_token_index': config.image_token_index, 'projector_hidden_act': config.projector_hidden_act,
          'vision_feature_layer': config.vision_feature_layer,
          'vision_feature_select_strategy': config.vision_feature_select_strategy,
          'multimodal_projector_bias': config.multimodal_projector_bias,
          'tie_word_embeddings': config.text_config.tie_word_embeddings}


class LlavaProjector(nn.Module):
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


def language_model_of(module: LlavaForConditionalGeneration) -> DecoderForCausalLM:
  """The decoder a LLaVA module nests as `language_model` (params['language_model']), with the module's dtypes,
  remat policy and attention implementation; unbound when called outside the module's setup."""
  cls = _component(DECODERS, module.config.text_config, 'decoder').module_cls
  return cls(module.config.text_config, dtype=module.dtype, param_dtype=module.param_dtype,
             remat_policy=module.remat_policy, attn_impl=module.attn_impl)


class LlavaForConditionalGeneration(nn.Module):
  """Token ids + image crops -> next-token logits (optionally with a KV cache).

  dtype is the compute dtype (None: the parameter dtype), param_dtype the storage dtype; remat_policy is the
  decoder's (see `DecoderForCausalLM`; the tower recomputes its layers for any policy but 'none'); attn_impl
  is passed to the tower and the decoder.
  """
  config: LlavaConfig
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32
  remat_policy: str = 'none'
  attn_impl: str = 'auto'

  def setup(self):
    cfg, kwargs = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    tower = _component(VISION_TOWERS, cfg.vision_config, 'vision tower').module_cls
    self.vision_tower = tower(cfg.vision_config, remat=self.remat_policy != 'none', attn_impl=self.attn_impl,
                              **kwargs)
    self.multi_modal_projector = LlavaProjector(
        cfg.text_config.hidden_size, HF_ACTIVATIONS[cfg.projector_hidden_act], cfg.multimodal_projector_bias,
        **kwargs)
    self.language_model = language_model_of(self)

  def __call__(self, input_ids: jax.Array | None = None, *, attention_mask: jax.Array | None = None,
               positions: jax.Array | None = None, segment_ids: jax.Array | None = None,
               inputs_embeds: jax.Array | None = None, cache: KVCache | None = None,
               logits_at: jax.Array | None = None, tap_index: jax.Array | None = None,
               tap_weight: jax.Array | None = None, **visual: Any) -> CausalLMOutput:
    """Runs the decoder on input_ids [B, S] with the visual features merged in, or on inputs_embeds [B, S, E].

    Visual inputs are those of `embed` (`**visual`, e.g. pixel_values), or for training pixel_values
    [B, K, H, W, 3] with tap_index / tap_weight [B, S, 4] (`embed_taps`). attention_mask, positions,
    segment_ids, cache and logits_at are passed to the decoder.

    Returns:
      CausalLMOutput(logits float32 [B, S, V], cache: the updated KVCache or None).
    """
    if inputs_embeds is None:
      if input_ids is None:
        raise ValueError('Pass input_ids or inputs_embeds.')
      if tap_index is not None:
        if tap_weight is None or 'pixel_values' not in visual:
          raise ValueError('the training forward takes pixel_values [B, K, H, W, 3], tap_index and tap_weight.')
        inputs_embeds = self.embed_taps(input_ids, visual.pop('pixel_values'), tap_index, tap_weight)
        if any(v is not None for v in visual.values()):
          raise ValueError(f'the training forward (tap_index) takes no {sorted(visual)}.')
      else:
        inputs_embeds = self.embed(input_ids, **visual)
    elif input_ids is not None or any(v is not None for v in visual.values()):
      raise ValueError('inputs_embeds already holds the visual features: pass no input_ids or visual inputs '
                       'with it.')
    return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, positions=positions,
                               segment_ids=segment_ids, cache=cache, logits_at=logits_at)

  def embed(self, input_ids: jax.Array, *, pixel_values: jax.Array | None = None) -> jax.Array:
    """Token embeddings [B, S, E] with the features of pixel_values [N, H, W, 3] (one crop per image, channels
    last, normalised) at the image tokens, image after image (each image's tokens_per_crop placeholders)."""
    cfg = self.config
    embeds = self.language_model.embed(input_ids)
    if pixel_values is not None:
      features = self.crop_features(pixel_values).reshape(-1, cfg.text_config.hidden_size)
      embeds = merge_features(embeds, input_ids == cfg.image_token_index, features, 'image')
    elif self.is_initializing():
      self._init_tower(embeds.dtype)
    return nn.with_logical_constraint(embeds, ('batch', 'length', 'embed'))

  def crop_features(self, crops: jax.Array) -> jax.Array:
    """Projected tower features [N, side^2, E] of crops [N, H, W, 3] (the CLS token dropped for 'default')."""
    hidden = self.vision_tower(crops, feature_layer=self.config.vision_feature_layer)
    if self.config.vision_feature_select_strategy == 'default':
      hidden = hidden[:, 1:]
    return self.multi_modal_projector(hidden)

  def bank_extras(self, dtype: DTypeLike) -> jax.Array:
    """Rows [R, E] after the crop features in the taps bank: LLaVA has none; OneVision adds image_newline."""
    return jnp.zeros((0, self.config.text_config.hidden_size), dtype)

  def visual_token_mask(self, input_ids: jax.Array) -> jax.Array:
    """Which tokens [B, S] are visual placeholders (the tapped tokens)."""
    return input_ids == self.config.image_token_index

  def embed_taps(self, input_ids: jax.Array, pixel_values: jax.Array, tap_index: jax.Array,
                 tap_weight: jax.Array) -> jax.Array:
    """Input embeddings [B, S, E]: text tokens from the table, visual tokens as tapped crop features.

    pixel_values [B, K, H, W, 3] -> bank [B, K * side^2 + R, E] (the crops' features, then `bank_extras`);
    visual token s of row b is sum_t tap_weight[b, s, t] * bank[b, tap_index[b, s, t]] (mmjax.models.visual_taps).
    """
    batch, crops = pixel_values.shape[:2]
    features = self.crop_features(pixel_values.reshape(batch * crops, *pixel_values.shape[2:]))
    features = features.reshape(batch, -1, features.shape[-1])
    extras = self.bank_extras(features.dtype).astype(features.dtype)
    bank = jnp.concatenate([features, jnp.broadcast_to(extras, (batch, *extras.shape))], axis=1)
    taps = jax.vmap(lambda rows, index: rows[index])(bank, tap_index.reshape(batch, -1))
    taps = taps.reshape(*tap_index.shape, -1) * tap_weight[..., None].astype(features.dtype)
    text = self.language_model.embed(input_ids)
    embeds = jnp.where(self.visual_token_mask(input_ids)[..., None], taps.sum(axis=2).astype(text.dtype), text)
    return nn.with_logical_constraint(embeds, ('batch', 'length', 'embed'))

  def _init_tower(self, dtype: DTypeLike) -> None:
    """Creates the tower's and projector's parameters at init when no image is given."""
    vision = self.config.vision_config
    self.crop_features(jnp.zeros((1, vision.image_size, vision.image_size, vision.num_channels), dtype))


def logits_fn(module: LlavaForConditionalGeneration) -> Callable[[Any, Mapping[str, jax.Array]], jax.Array]:
  """(params, batch) -> float32 logits [B, S, V] of a training batch: input_ids, attention_mask (or segment_ids),
  pixel_values [B, K, H, W, 3], tap_index and tap_weight [B, S, 4] (the training forward of every experiment)."""
  def forward(params, batch):
    return module.apply({'params': params}, batch['input_ids'], attention_mask=batch.get('attention_mask'),
                        segment_ids=batch.get('segment_ids'), pixel_values=batch['pixel_values'],
                        tap_index=batch['tap_index'], tap_weight=batch['tap_weight']).logits

  return forward
