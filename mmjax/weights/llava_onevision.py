"""HF LlavaOnevisionForConditionalGeneration tensor names <-> mmjax.models.llava_onevision parameters.

Canonical names are those of the released checkpoints (llava-hf/llava-onevision-*-hf), which transformers 4.x and
5.x both load: `language_model.model.*`, `language_model.lm_head.weight`, `vision_tower.vision_model.*`,
`multi_modal_projector.linear_{1,2}.*`, `image_newline`. Also read: files written by transformers 5.x (vision
tower without `vision_model.`) and the in-memory 5.x names (`model.language_model.*`, `model.vision_tower.*`,
`model.multi_modal_projector.*`, `model.image_newline`, `lm_head.weight`).
"""
import dataclasses
import re

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmjax.models.llava_onevision import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
from mmjax.weights import qwen2, siglip
from mmjax.weights.key_map import LINEAR, SAME, KeyMap, ModelSpec, Shapes, Target, subtree

# (pattern, replacement), applied in order to every name found in a file.
_RENAMES = ((r'^model\.language_model\.', 'language_model.model.'),
            (r'^lm_head\.', 'language_model.lm_head.'),
            (r'^model\.(vision_tower|multi_modal_projector|image_newline)', r'\1'),
            (rf'^vision_tower\.(?!{re.escape(siglip.PREFIX)})', f'vision_tower.{siglip.PREFIX}'))


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


def key_map(config: LlavaOnevisionConfig) -> KeyMap:
  """language_model.* -> language_model/..., vision_tower.* -> vision_tower/..., projector and image_newline."""
  return _key_map(qwen2.key_map(config.text_config), siglip.key_map(config.vision_config),
                  config.multimodal_projector_bias)


def layout_key_map(shapes: Shapes) -> KeyMap:
  """The key map of a LlavaOnevisionForConditionalGeneration parameter tree of these shapes."""
  return _key_map(qwen2.layout_key_map(subtree(shapes, 'language_model')),
                  siglip.layout_key_map(subtree(shapes, 'vision_tower')),
                  ('multi_modal_projector', 'linear_1', 'bias') in shapes)


def _key_map(text: KeyMap, vision: KeyMap, projector_bias: bool) -> KeyMap:
  text_targets, text_ignore = _nest(text, 'language_model.', 'language_model')
  vision_targets, vision_ignore = _nest(vision, 'vision_tower.', 'vision_tower')
  targets = {**text_targets, **vision_targets, 'image_newline': Target(('image_newline',), SAME)}
  for name in ('linear_1', 'linear_2'):
    targets[f'multi_modal_projector.{name}.weight'] = Target(('multi_modal_projector', name, 'kernel'), LINEAR)
    if projector_bias:
      targets[f'multi_modal_projector.{name}.bias'] = Target(('multi_modal_projector', name, 'bias'), SAME)
  return RenamingKeyMap(targets, tuple(text_ignore + vision_ignore), renames=_RENAMES)


def build(config: LlavaOnevisionConfig, dtype: DTypeLike) -> LlavaOnevisionForConditionalGeneration:
  return LlavaOnevisionForConditionalGeneration(config, dtype=dtype, param_dtype=dtype)


def _example_inputs(config: LlavaOnevisionConfig) -> tuple[jax.Array]:
  # Text alone suffices: init also runs the vision tower and projector on a dummy crop.
  return (jnp.zeros((1, 1), jnp.int32),)


SPEC = ModelSpec(config_cls=LlavaOnevisionConfig, build=build, example_inputs=_example_inputs, key_map=key_map)
