"""What a checkpoint is: HF model_type, diffusers `_class_name` or a named file layout -> how to read it.

Supporting a new model is one entry here plus its key map module. Folders are matched by their config.json (HF
`model_type`, diffusers `_class_name`); files without a config (timm, torchvision, original repositories) by the
layout name the caller gives.
"""
from collections.abc import Mapping
from typing import Any

from mmjax.weights import clip, dit, llama, llava, llava_onevision, pvt_v2, qwen2, siglip, unet, vae, vggish
from mmjax.weights.key_map import Layout, ModelSpec

MODEL_SPECS: dict[str, ModelSpec] = {
    'clip_vision_model': clip.VISION_SPEC,
    'clip_text_model': clip.TEXT_SPEC,
    'clip': clip.CLIP_MODEL_SPEC,
    'llama': llama.SPEC,
    'llava': llava.SPEC,
    'llava_onevision': llava_onevision.SPEC,
    'pvt_v2': pvt_v2.SPEC,
    'qwen2': qwen2.SPEC,
    'siglip_vision_model': siglip.SPEC,
    'siglip': siglip.SIGLIP_MODEL_SPEC,
}

# diffusers `_class_name` -> spec (the folder's config.json parsed by spec.config_cls.from_hf_dict). A
# Transformer2DModel reads as a DiT only when its config is one (DiTConfig.from_hf_dict refuses the others).
DIFFUSERS_SPECS: dict[str, ModelSpec] = {
    'AutoencoderKL': vae.SPEC,
    'DiTTransformer2DModel': dit.SPEC,
    'Transformer2DModel': dit.SPEC,
    'UNet2DConditionModel': unet.SPEC,
}

# Layout name -> key map from the target's shapes. The HF model types are layouts too: a bare .safetensors file
# with their tensor names.
LAYOUTS: dict[str, Layout] = {
    'clip_vision_model': clip.vision_layout_key_map,
    'clip_text_model': clip.text_layout_key_map,
    'clip': clip.clip_layout_key_map,
    'llama': llama.layout_key_map,
    'llava': llava.layout_key_map,
    'llava_onevision': llava_onevision.layout_key_map,
    'pvt_v2': pvt_v2.layout_key_map,
    'qwen2': qwen2.layout_key_map,
    'siglip_vision_model': siglip.layout_key_map,
    'torchvggish': vggish.layout_key_map,  # the released VGGish state dict (torchvggish's names)
}


def spec_for_model_type(model_type: str | None, source: str = 'config.json') -> ModelSpec:
  """The spec registered for `model_type`; ValueError naming `source` and the supported types otherwise."""
  if model_type is None:
    raise ValueError(f'{source} has no model_type (nor a diffusers _class_name); supported model types: '
                     f'{sorted(MODEL_SPECS)}.')
  if model_type not in MODEL_SPECS:
    raise ValueError(f'{source}: unsupported model_type {model_type!r}; supported: {sorted(MODEL_SPECS)}.')
  return MODEL_SPECS[model_type]


def spec_for_config(hf_config: Mapping[str, Any], source: str = 'config.json') -> ModelSpec:
  """The spec of an HF (`model_type`) or diffusers (`_class_name`) config.json dict; ValueError naming `source`."""
  if 'model_type' not in hf_config and '_class_name' in hf_config:
    name = hf_config['_class_name']
    if name not in DIFFUSERS_SPECS:
      raise ValueError(f'{source}: unsupported diffusers _class_name {name!r}; supported: {sorted(DIFFUSERS_SPECS)}.')
    return DIFFUSERS_SPECS[name]
  return spec_for_model_type(hf_config.get('model_type'), source)


def layout(name: str) -> Layout:
  """The registered layout `name`; ValueError listing the registered ones otherwise."""
  if name not in LAYOUTS:
    raise ValueError(f'unknown weight layout {name!r}; registered layouts: {sorted(LAYOUTS)}.')
  return LAYOUTS[name]


def spec_of(config: Any) -> ModelSpec:
  """The first registered spec whose config class `config` is an instance of."""
  for spec in (*MODEL_SPECS.values(), *DIFFUSERS_SPECS.values()):
    if isinstance(config, spec.config_cls):
      return spec
  raise ValueError(f'No weight spec for config type {type(config).__name__}; supported model types: '
                   f'{sorted(MODEL_SPECS)}.')
