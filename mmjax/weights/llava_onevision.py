"""HF LlavaOnevisionForConditionalGeneration tensor names <-> mmjax.models.llava_onevision parameters: LLaVA's
(mmjax.weights.llava: released names, transformers 4.x and 5.x files) plus `image_newline`."""
from jax.typing import DTypeLike

from mmjax.models.llava_onevision import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
from mmjax.weights.key_map import ModelSpec
from mmjax.weights.llava import example_inputs, key_map, layout_key_map

__all__ = ['SPEC', 'key_map', 'layout_key_map']


def build(config: LlavaOnevisionConfig, dtype: DTypeLike) -> LlavaOnevisionForConditionalGeneration:
  return LlavaOnevisionForConditionalGeneration(config, dtype=dtype, param_dtype=dtype)


SPEC = ModelSpec(config_cls=LlavaOnevisionConfig, build=build, example_inputs=example_inputs, key_map=key_map)
