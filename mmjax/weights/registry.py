"""HF model_type -> ModelSpec. Supporting a new model is one entry here plus its key map module."""
from typing import Any

from mmjax.weights import llava_onevision, qwen2, siglip
from mmjax.weights.key_map import ModelSpec

MODEL_SPECS: dict[str, ModelSpec] = {
    'llava_onevision': llava_onevision.SPEC,
    'qwen2': qwen2.SPEC,
    'siglip_vision_model': siglip.SPEC,
}


def spec_for_model_type(model_type: str | None, source: str = 'config.json') -> ModelSpec:
  """The spec registered for `model_type`; ValueError naming `source` and the supported types otherwise."""
  if model_type not in MODEL_SPECS:
    raise ValueError(f'{source}: unsupported model_type {model_type!r}; supported: {sorted(MODEL_SPECS)}.')
  return MODEL_SPECS[model_type]


def model_type_of(config: Any) -> str:
  """The registered model_type whose config class `config` is an instance of."""
  for model_type, spec in MODEL_SPECS.items():
    if isinstance(config, spec.config_cls):
      return model_type
  raise ValueError(f'No weight spec for config type {type(config).__name__}; supported model types: '
                   f'{sorted(MODEL_SPECS)}.')
