"""HF LlamaForCausalLM tensor names <-> mmjax.models.llama parameters (the decoder family's key map, no biases)."""
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmjax.models.llama import LlamaConfig, LlamaForCausalLM
from mmjax.weights.decoder import key_map, layout_key_map
from mmjax.weights.key_map import ModelSpec

__all__ = ['SPEC', 'key_map', 'layout_key_map']


def build(config: LlamaConfig, dtype: DTypeLike) -> LlamaForCausalLM:
  return LlamaForCausalLM(config, dtype=dtype, param_dtype=dtype)


def _example_inputs(config: LlamaConfig) -> tuple[jax.Array]:
  return (jnp.zeros((1, 1), jnp.int32),)


SPEC = ModelSpec(config_cls=LlamaConfig, build=build, example_inputs=_example_inputs, key_map=key_map)
