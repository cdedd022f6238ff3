"""HF CLIP tensor names <-> mmjax.models.clip parameters.

`clip_vision_model` / `clip_text_model` folders hold a CLIPVisionModel / CLIPTextModel or, when their config.json
names the `...WithProjection` architecture, the tower under `vision_model.` / `text_model.` beside
`visual_projection` / `text_projection`. Canonical names of the bare towers carry the `vision_model.` /
`text_model.` prefix, which transformers 4.x writes and 5.x reads; files written by 5.x omit it and are read too.
A full CLIPModel folder (model_type 'clip', e.g. LLaVA-1.5's openai/clip-vit-large-patch14-336) reads as its
vision tower; the 'clip' layout reads either tower of such a file into a target of that tower's shapes.
"""
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmjax.models.clip import (
  CLIPTextConfig,
  CLIPTextModel,
  CLIPTextModelWithProjection,
  CLIPVisionConfig,
  CLIPVisionModel,
  CLIPVisionModelWithProjection,
)
from mmjax.weights.key_map import (
  CONV,
  FLATTEN,
  LINEAR,
  LINEAR_OUT,
  SAME,
  KeyMap,
  ModelSpec,
  ParamPath,
  Shapes,
  Target,
  layer_count,
  subtree,
)

VISION, TEXT = 'vision_model', 'text_model'
_PROJECTIONS = {VISION: 'visual_projection', TEXT: 'text_projection'}
# Older checkpoints persist the position_ids buffers (arange); the contrastive temperature is not part of a tower.
_BUFFERS = (rf'({VISION}|{TEXT})\.embeddings\.position_ids',)


def _norm(hf: str, path: ParamPath) -> dict[str, Target]:
  return {f'{hf}.weight': Target((*path, 'scale'), SAME), f'{hf}.bias': Target((*path, 'bias'), SAME)}


def _linear(hf: str, path: ParamPath) -> dict[str, Target]:
  return {f'{hf}.weight': Target((*path, 'kernel'), LINEAR), f'{hf}.bias': Target((*path, 'bias'), SAME)}


def _tower_targets(tower: str, num_layers: int, at: ParamPath) -> dict[str, Target]:
  """The tensors of one tower (tower: VISION or TEXT), named with the `{tower}.` prefix, placed under `at`."""
  p = f'{tower}.'
  if tower == VISION:
    targets = {f'{p}embeddings.class_embedding': Target((*at, 'class_embedding'), SAME),
               f'{p}embeddings.patch_embedding.weight': Target((*at, 'patch_embedding', 'kernel'), CONV),
               **_norm(f'{p}pre_layrnorm', (*at, 'pre_layrnorm')),
               **_norm(f'{p}post_layernorm', (*at, 'post_layernorm'))}
  else:
    targets = {f'{p}embeddings.token_embedding.weight': Target((*at, 'token_embedding', 'embedding'), SAME),
               **_norm(f'{p}final_layer_norm', (*at, 'final_layer_norm'))}
  targets[f'{p}embeddings.position_embedding.weight'] = Target((*at, 'position_embedding'), SAME)
  for i in range(num_layers):
    hf, layer = f'{p}encoder.layers.{i}.', (*at, f'layers_{i}')
    for name in ('q_proj', 'k_proj', 'v_proj'):
      targets[f'{hf}self_attn.{name}.weight'] = Target((*layer, 'attention', name, 'kernel'), LINEAR)
      targets[f'{hf}self_attn.{name}.bias'] = Target((*layer, 'attention', name, 'bias'), FLATTEN)
    targets[f'{hf}self_attn.out_proj.weight'] = Target((*layer, 'attention', 'o_proj', 'kernel'), LINEAR_OUT)
    targets[f'{hf}self_attn.out_proj.bias'] = Target((*layer, 'attention', 'o_proj', 'bias'), SAME)
    targets.update(_norm(f'{hf}layer_norm1', (*layer, 'layernorm_before')))
    targets.update(_norm(f'{hf}layer_norm2', (*layer, 'layernorm_after')))
    targets.update(_linear(f'{hf}mlp.fc1', (*layer, 'mlp', 'fc1')))
    targets.update(_linear(f'{hf}mlp.fc2', (*layer, 'mlp', 'fc2')))
  return targets


def _key_map(tower: str, num_layers: int, with_projection: bool, ignore: tuple[str, ...] = ()) -> KeyMap:
  """A tower alone (paths at the root, the `{tower}.` prefix optional in files) or with its projection (paths
  under `{tower}/`, names as HF's ...WithProjection writes them)."""
  if not with_projection:
    return KeyMap(_tower_targets(tower, num_layers, ()), ignore=(*_BUFFERS, *ignore), optional_prefix=f'{tower}.')
  projection = _PROJECTIONS[tower]
  targets = {**_tower_targets(tower, num_layers, (tower,)),
             f'{projection}.weight': Target((projection, 'kernel'), LINEAR)}
  return KeyMap(targets, ignore=(*_BUFFERS, *ignore))


def vision_key_map(config: CLIPVisionConfig) -> KeyMap:
  """vision_model.{embeddings, pre_layrnorm, encoder.layers.{i}, post_layernorm}, visual_projection ->
  class_embedding, patch_embedding, position_embedding, pre_layrnorm, layers_{i}, post_layernorm (under
  vision_model/ beside visual_projection with the projection)."""
  return _key_map(VISION, config.num_hidden_layers, config.with_projection)


def text_key_map(config: CLIPTextConfig) -> KeyMap:
  """text_model.{embeddings, encoder.layers.{i}, final_layer_norm}, text_projection -> token_embedding,
  position_embedding, layers_{i}, final_layer_norm (under text_model/ beside text_projection with the projection)."""
  return _key_map(TEXT, config.num_hidden_layers, config.with_projection)


def _shapes_key_map(tower: str, shapes: Shapes, ignore: tuple[str, ...] = ()) -> KeyMap:
  with_projection = any(path[0] == _PROJECTIONS[tower] for path in shapes)
  layers = layer_count(subtree(shapes, tower) if with_projection else shapes)
  return _key_map(tower, layers, with_projection, ignore)


def vision_layout_key_map(shapes: Shapes) -> KeyMap:
  """The key map of a CLIPVisionModel(WithProjection) parameter tree of these shapes ('clip_vision_model')."""
  return _shapes_key_map(VISION, shapes)


def text_layout_key_map(shapes: Shapes) -> KeyMap:
  """The key map of a CLIPTextModel(WithProjection) parameter tree of these shapes ('clip_text_model')."""
  return _shapes_key_map(TEXT, shapes)


def _other_parts(tower: str, with_projection: bool) -> tuple[str, ...]:
  """Regexes of a CLIPModel file's tensors outside `tower` (and outside its projection when with_projection)."""
  other = TEXT if tower == VISION else VISION
  skipped = [rf'{other}\..*', 'logit_scale', rf'{_PROJECTIONS[other]}\.weight']
  if not with_projection:
    skipped.append(rf'{_PROJECTIONS[tower]}\.weight')
  # Without the projection the canonical names carry the tower's prefix (KeyMap.optional_prefix).
  prefix = '' if with_projection else rf'{tower}\.'
  return tuple(prefix + s for s in skipped)


def clip_layout_key_map(shapes: Shapes) -> KeyMap:
  """A CLIPModel file read into the tower these shapes are (vision when they hold class_embedding), with or
  without its projection; the other tower and logit_scale are read past ('clip')."""
  with_projection = any(path[0] in _PROJECTIONS.values() for path in shapes)
  tower_shapes = subtree(shapes, VISION) | subtree(shapes, TEXT) if with_projection else shapes
  tower = VISION if ('class_embedding',) in tower_shapes else TEXT
  return _shapes_key_map(tower, shapes, _other_parts(tower, with_projection))


def build_vision(config: CLIPVisionConfig, dtype: DTypeLike) -> CLIPVisionModel | CLIPVisionModelWithProjection:
  cls = CLIPVisionModelWithProjection if config.with_projection else CLIPVisionModel
  return cls(config, dtype=dtype, param_dtype=dtype)


def build_text(config: CLIPTextConfig, dtype: DTypeLike) -> CLIPTextModel | CLIPTextModelWithProjection:
  cls = CLIPTextModelWithProjection if config.with_projection else CLIPTextModel
  return cls(config, dtype=dtype, param_dtype=dtype)


def _vision_inputs(config: CLIPVisionConfig) -> tuple[jax.Array]:
  return (jnp.zeros((1, config.image_size, config.image_size, config.num_channels), jnp.float32),)


def _text_inputs(config: CLIPTextConfig) -> tuple[jax.Array]:
  return (jnp.zeros((1, config.max_position_embeddings), jnp.int32),)


VISION_SPEC = ModelSpec(config_cls=CLIPVisionConfig, build=build_vision, example_inputs=_vision_inputs,
                        key_map=vision_key_map)
TEXT_SPEC = ModelSpec(config_cls=CLIPTextConfig, build=build_text, example_inputs=_text_inputs,
                      key_map=text_key_map)


class CLIPModelVisionConfig:
  """Reads the vision tower's config from an HF CLIPModel config.json (its `vision_config`)."""

  @staticmethod
  def from_hf_dict(d: Mapping[str, Any]) -> CLIPVisionConfig:
    return CLIPVisionConfig.from_hf_dict({**(d.get('vision_config') or {}), 'architectures': ['CLIPVisionModel']})


def _clip_model_key_map(config: CLIPVisionConfig) -> KeyMap:
  return _key_map(VISION, config.num_hidden_layers, False, _other_parts(VISION, False))


# An HF CLIPModel (model_type 'clip'): its vision tower, without the projection. Saving writes a clip_vision_model
# directory.
CLIP_MODEL_SPEC = ModelSpec(config_cls=CLIPModelVisionConfig, build=build_vision, example_inputs=_vision_inputs,
                            key_map=_clip_model_key_map)
