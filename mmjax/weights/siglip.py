"""HF SiglipVisionModel tensor names <-> mmjax.models.siglip parameters.

Canonical names carry the `vision_model.` prefix, which transformers 4.x writes and 5.x reads; files written by
transformers 5.x omit it and are read too. The vision tower of an HF SiglipModel (model_type 'siglip', the
released google/siglip-* checkpoints) reads the same way, past its text tower.
"""
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmjax.models.siglip import SiglipVisionConfig, SiglipVisionModel
from mmjax.weights.key_map import CONV, FLATTEN, LINEAR, LINEAR_OUT, SAME, KeyMap, ModelSpec, Target, layer_count

PREFIX = 'vision_model.'


def _norm(hf: str, path: tuple[str, ...]) -> dict[str, Target]:
  return {f'{hf}.weight': Target((*path, 'scale'), SAME), f'{hf}.bias': Target((*path, 'bias'), SAME)}


def _linear(hf: str, path: tuple[str, ...]) -> dict[str, Target]:
  return {f'{hf}.weight': Target((*path, 'kernel'), LINEAR), f'{hf}.bias': Target((*path, 'bias'), SAME)}


def key_map(config: SiglipVisionConfig) -> KeyMap:
  """embeddings / encoder.layers.{i} / post_layernorm / head -> patch_embedding, position_embedding / layers_{i} /
  post_layernorm / head (the pooling head's fused in_proj [3E, E] becomes a kernel [E, 3, H, D])."""
  return _key_map(config.num_hidden_layers, config.vision_use_head)


def layout_key_map(shapes: Mapping[tuple[str, ...], tuple[int, ...]]) -> KeyMap:
  """The key map of a SiglipVisionModel parameter tree of these shapes (the 'siglip_vision_model' layout)."""
  return _key_map(layer_count(shapes), any(path[0] == 'head' for path in shapes))


def _key_map(num_layers: int, use_head: bool, ignore: tuple[str, ...] = ()) -> KeyMap:
  p = PREFIX
  targets = {f'{p}embeddings.patch_embedding.weight': Target(('patch_embedding', 'kernel'), CONV),
             f'{p}embeddings.patch_embedding.bias': Target(('patch_embedding', 'bias'), SAME),
             f'{p}embeddings.position_embedding.weight': Target(('position_embedding',), SAME),
             **_norm(f'{p}post_layernorm', ('post_layernorm',))}
  for i in range(num_layers):
    hf, layer = f'{p}encoder.layers.{i}.', f'layers_{i}'
    for name in ('q_proj', 'k_proj', 'v_proj'):
      targets[f'{hf}self_attn.{name}.weight'] = Target((layer, 'attention', name, 'kernel'), LINEAR)
      targets[f'{hf}self_attn.{name}.bias'] = Target((layer, 'attention', name, 'bias'), FLATTEN)
    targets[f'{hf}self_attn.out_proj.weight'] = Target((layer, 'attention', 'o_proj', 'kernel'), LINEAR_OUT)
    targets[f'{hf}self_attn.out_proj.bias'] = Target((layer, 'attention', 'o_proj', 'bias'), SAME)
    targets.update(_norm(f'{hf}layer_norm1', (layer, 'layernorm_before')))
    targets.update(_norm(f'{hf}layer_norm2', (layer, 'layernorm_after')))
    targets.update(_linear(f'{hf}mlp.fc1', (layer, 'mlp', 'fc1')))
    targets.update(_linear(f'{hf}mlp.fc2', (layer, 'mlp', 'fc2')))
  if use_head:
    targets[f'{p}head.probe'] = Target(('head', 'probe'), SAME)
    targets[f'{p}head.attention.in_proj_weight'] = Target(('head', 'attention', 'in_proj', 'kernel'), LINEAR)
    targets[f'{p}head.attention.in_proj_bias'] = Target(('head', 'attention', 'in_proj', 'bias'), FLATTEN)
    targets[f'{p}head.attention.out_proj.weight'] = Target(('head', 'attention', 'out_proj', 'kernel'), LINEAR_OUT)
    targets[f'{p}head.attention.out_proj.bias'] = Target(('head', 'attention', 'out_proj', 'bias'), SAME)
    targets.update(_norm(f'{p}head.layernorm', ('head', 'layernorm')))
    targets.update(_linear(f'{p}head.mlp.fc1', ('head', 'mlp', 'fc1')))
    targets.update(_linear(f'{p}head.mlp.fc2', ('head', 'mlp', 'fc2')))
  # Older checkpoints persist the position_ids buffer (arange(N)).
  return KeyMap(targets, ignore=(rf'{p}embeddings\.position_ids', *ignore), optional_prefix=p)


def build(config: SiglipVisionConfig, dtype: DTypeLike) -> SiglipVisionModel:
  return SiglipVisionModel(config, dtype=dtype, param_dtype=dtype)


def _example_inputs(config: SiglipVisionConfig) -> tuple[jax.Array]:
  return (jnp.zeros((1, config.image_size, config.image_size, config.num_channels), jnp.float32),)


SPEC = ModelSpec(config_cls=SiglipVisionConfig, build=build, example_inputs=_example_inputs, key_map=key_map)


class SiglipModelVisionConfig:
  """Reads the vision tower's config from an HF SiglipModel config.json (its `vision_config`)."""

  @staticmethod
  def from_hf_dict(d: Mapping[str, Any]) -> SiglipVisionConfig:
    return SiglipVisionConfig.from_hf_dict(d.get('vision_config') or {})


def _siglip_model_key_map(config: SiglipVisionConfig) -> KeyMap:
  # The text tower and the contrastive scale and bias are read past (canonical names carry vision_model.).
  return _key_map(config.num_hidden_layers, config.vision_use_head,
                  ignore=(rf'{PREFIX}(text_model\..*|logit_scale|logit_bias)',))


# An HF SiglipModel (model_type 'siglip'): its vision tower. Saving writes a siglip_vision_model directory.
SIGLIP_MODEL_SPEC = ModelSpec(config_cls=SiglipModelVisionConfig, build=build, example_inputs=_example_inputs,
                              key_map=_siglip_model_key_map)
