"""HF LlavaForConditionalGeneration tensor names <-> mmjax.models.llava parameters, over any registered tower and
decoder (LLaVA-OneVision adds `image_newline`, see llava_onevision.py).

Canonical names are those of the released checkpoints (llava-hf/*), which transformers 4.x and 5.x both load:
`language_model.model.*`, `language_model.lm_head.weight`, `vision_tower.vision_model.*`,
`multi_modal_projector.linear_{1,2}.*`. Also read: files written by transformers 5.x (vision tower without
`vision_model.`) and the in-memory 5.x names (`model.language_model.*`, `model.vision_tower.*`,
`model.multi_modal_projector.*`, `lm_head.weight`).
"""
import dataclasses
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmjax.models.clip import CLIPVisionConfig
from mmjax.models.llava import LlavaConfig, LlavaForConditionalGeneration
from mmjax.models.siglip import SiglipVisionConfig
from mmjax.weights import clip, decoder, siglip
from mmjax.weights.key_map import LINEAR, SAME, KeyMap, ModelSpec, Shapes, Target, subtree

# Both towers name their HF tensors `vision_model.*`.
TOWER_PREFIX = 'vision_model.'
# Tower config class -> (key map of a config, key map of a parameter tree's shapes, is this tree that tower?).
TOWER_KEY_MAPS: dict[type, tuple[Callable[..., KeyMap], Callable[[Shapes], KeyMap], Callable[[Shapes], bool]]] = {
    CLIPVisionConfig: (clip.vision_key_map, clip.vision_layout_key_map,
                       lambda shapes: ('class_embedding',) in shapes),
    SiglipVisionConfig: (siglip.key_map, siglip.layout_key_map, lambda shapes: ('class_embedding',) not in shapes),
}

# (pattern, replacement), applied in order to every name found in a file.
_RENAMES = ((r'^model\.language_model\.', 'language_model.model.'),
            (r'^lm_head\.', 'language_model.lm_head.'),
            (r'^model\.(vision_tower|multi_modal_projector|image_newline)', r'\1'),
            (rf'^vision_tower\.(?!{re.escape(TOWER_PREFIX)})', f'vision_tower.{TOWER_PREFIX}'))


@dataclasses.dataclass(frozen=True)
class RenamingKeyMap(KeyMap):
  """A KeyMap whose canonical() rewrites names with regex (pattern, replacement) pairs, in order."""
  renames: tuple[tuple[str, str], ...] = ()

  def canonical(self, name: str) -> str:
    for pattern, replacement in self.renames:
      name = re.sub(pattern, replacement, name)
    return name


def _nest(key_map: KeyMap, hf_prefix: str, module: str) -> tuple[dict[str, Target], list[str]]:
  """A sub-model's targets and ignore patterns under an HF name prefix and a flax submodule name."""
  targets = {hf_prefix + name: Target((module, *t.path), t.transform) for name, t in key_map.targets.items()}
  return targets, [re.escape(hf_prefix) + pattern for pattern in key_map.ignore]


def _tower(config) -> tuple[Callable[..., KeyMap], Callable[[Shapes], KeyMap], Callable[[Shapes], bool]]:
  if type(config) not in TOWER_KEY_MAPS:
    raise ValueError(f'no weight key map for the vision tower {type(config).__name__}; known: '
                     f'{[c.__name__ for c in TOWER_KEY_MAPS]}.')
  return TOWER_KEY_MAPS[type(config)]


def key_map(config: LlavaConfig) -> KeyMap:
  """language_model.* -> language_model/..., vision_tower.* -> vision_tower/..., the projector (and
  image_newline for LLaVA-OneVision)."""
  return compose(decoder.key_map(config.text_config), _tower(config.vision_config)[0](config.vision_config),
                 config.multimodal_projector_bias, newline=hasattr(config, 'video_token_index'))


def layout_key_map(shapes: Shapes) -> KeyMap:
  """The key map of a LLaVA parameter tree of these shapes (the tower recognised from its parameters)."""
  tower_shapes = subtree(shapes, 'vision_tower')
  tower = next(maps[1] for maps in TOWER_KEY_MAPS.values() if maps[2](tower_shapes))
  return compose(decoder.layout_key_map(subtree(shapes, 'language_model')), tower(tower_shapes),
                 ('multi_modal_projector', 'linear_1', 'bias') in shapes, newline=('image_newline',) in shapes)


def compose(text: KeyMap, vision: KeyMap, projector_bias: bool, *, newline: bool) -> KeyMap:
  text_targets, text_ignore = _nest(text, 'language_model.', 'language_model')
  vision_targets, vision_ignore = _nest(vision, 'vision_tower.', 'vision_tower')
  targets = {**text_targets, **vision_targets}
  if newline:
    targets['image_newline'] = Target(('image_newline',), SAME)
  for name in ('linear_1', 'linear_2'):
    targets[f'multi_modal_projector.{name}.weight'] = Target(('multi_modal_projector', name, 'kernel'), LINEAR)
    if projector_bias:
      targets[f'multi_modal_projector.{name}.bias'] = Target(('multi_modal_projector', name, 'bias'), SAME)
  return RenamingKeyMap(targets, tuple(text_ignore + vision_ignore), renames=_RENAMES)


def build(config: LlavaConfig, dtype: DTypeLike) -> LlavaForConditionalGeneration:
  return LlavaForConditionalGeneration(config, dtype=dtype, param_dtype=dtype)


def example_inputs(config: LlavaConfig) -> tuple[jax.Array]:
  # Text alone suffices: init also runs the vision tower and projector on a dummy crop.
  return (jnp.zeros((1, 1), jnp.int32),)


SPEC = ModelSpec(config_cls=LlavaConfig, build=build, example_inputs=example_inputs, key_map=key_map)
