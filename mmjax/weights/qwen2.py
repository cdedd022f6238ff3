"""HF Qwen2ForCausalLM tensor names <-> mmjax.models.qwen2 parameters (the decoder family's key map, with biases)."""
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmjax.models.qwen2 import Qwen2Config, Qwen2ForCausalLM
from mmjax.weights.decoder import key_map, layout_key_map
from mmjax.weights.key_map import ModelSpec

__all__ = ['SPEC', 'key_map', 'layout_key_map']


def build(config: Qwen2Config, dtype: DTypeLike) -> Qwen2ForCausalLM:
  return Qwen2ForCausalLM(config, dtype=dtype, param_dtype=dtype)


def _example_inputs(config: Qwen2Config) -> tuple[jax.Array]:
  return (jnp.zeros((1, 1), jnp.int32),)


SPEC = ModelSpec(config_cls=Qwen2Config, build=build, example_inputs=_example_inputs, key_map=key_map)
