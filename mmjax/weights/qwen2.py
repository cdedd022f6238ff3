"""HF Qwen2ForCausalLM tensor names <-> mmjax.models.qwen2 parameters."""
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmjax.models.qwen2 import Qwen2Config, Qwen2ForCausalLM
from mmjax.weights.key_map import FLATTEN, LINEAR, LINEAR_OUT, SAME, KeyMap, ModelSpec, Shapes, Target, layer_count


def key_map(config: Qwen2Config) -> KeyMap:
  """model.embed_tokens / model.layers.{i}.* / model.norm / lm_head -> embed_tokens / layers_{i} / norm / lm_head.

  With tied embeddings a stored lm_head.weight (a copy of the embeddings) is read past.
  """
  return _key_map(config.num_hidden_layers, config.tie_word_embeddings)


def layout_key_map(shapes: Shapes) -> KeyMap:
  """The key map of a Qwen2ForCausalLM parameter tree of these shapes (the 'qwen2' layout of a bare file)."""
  return _key_map(layer_count(shapes), ('lm_head', 'kernel') not in shapes)


def _key_map(num_layers: int, tied: bool) -> KeyMap:
  targets = {'model.embed_tokens.weight': Target(('embed_tokens', 'embedding'), SAME),
             'model.norm.weight': Target(('norm', 'scale'), SAME)}
  for i in range(num_layers):
    hf, layer = f'model.layers.{i}.', f'layers_{i}'
    for name in ('q_proj', 'k_proj', 'v_proj'):
      targets[f'{hf}self_attn.{name}.weight'] = Target((layer, 'self_attn', name, 'kernel'), LINEAR)
      targets[f'{hf}self_attn.{name}.bias'] = Target((layer, 'self_attn', name, 'bias'), FLATTEN)
    targets[f'{hf}self_attn.o_proj.weight'] = Target((layer, 'self_attn', 'o_proj', 'kernel'), LINEAR_OUT)
    for name in ('gate_proj', 'up_proj', 'down_proj'):
      targets[f'{hf}mlp.{name}.weight'] = Target((layer, 'mlp', name, 'kernel'), LINEAR)
    for name in ('input_layernorm', 'post_attention_layernorm'):
      targets[f'{hf}{name}.weight'] = Target((layer, name, 'scale'), SAME)
  ignore = [r'model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq']
  if tied:
    ignore.append(r'lm_head\.weight')
  else:
    targets['lm_head.weight'] = Target(('lm_head', 'kernel'), LINEAR)
  return KeyMap(targets, tuple(ignore))


def build(config: Qwen2Config, dtype: DTypeLike) -> Qwen2ForCausalLM:
  return Qwen2ForCausalLM(config, dtype=dtype, param_dtype=dtype)


def _example_inputs(config: Qwen2Config) -> tuple[jax.Array]:
  return (jnp.zeros((1, 1), jnp.int32),)


SPEC = ModelSpec(config_cls=Qwen2Config, build=build, example_inputs=_example_inputs, key_map=key_map)
