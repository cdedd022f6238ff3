"""HF tensor names <-> parameters of the decoder family (`mmjax.models.decoder`): Qwen2 and Llama share them."""
import jax.numpy as jnp

from mmjax.models.decoder import DecoderConfig, DecoderForCausalLM
from mmjax.weights.key_map import (
  FLATTEN,
  LINEAR,
  LINEAR_OUT,
  SAME,
  KeyMap,
  ModelSpec,
  Shapes,
  Target,
  layer_count,
)


def family_spec(config_cls: type[DecoderConfig], module_cls: type[DecoderForCausalLM]) -> ModelSpec:
  """The registry entry of one family member (Qwen2, Llama): its config and module classes, this key map."""
  def build(config: DecoderConfig, dtype) -> DecoderForCausalLM:
    return module_cls(config, dtype=dtype, param_dtype=dtype)

  return ModelSpec(config_cls=config_cls, build=build,
                   example_inputs=lambda config: (jnp.zeros((1, 1), jnp.int32),), key_map=key_map)


def key_map(config: DecoderConfig) -> KeyMap:
  """model.embed_tokens / model.layers.{i}.* / model.norm / lm_head -> embed_tokens / layers_{i} / norm / lm_head.

  q/k/v biases are mapped when config.attention_bias; with tied embeddings a stored lm_head.weight (a copy of the
  embeddings) is read past.
  """
  return _key_map(config.num_hidden_layers, config.tie_word_embeddings, config.attention_bias)


def layout_key_map(shapes: Shapes) -> KeyMap:
  """The key map of a family parameter tree of these shapes (a bare file with HF names)."""
  return _key_map(layer_count(shapes), ('lm_head', 'kernel') not in shapes,
                  ('layers_0', 'self_attn', 'q_proj', 'bias') in shapes)


def _key_map(num_layers: int, tied: bool, attention_bias: bool) -> KeyMap:
  targets = {'model.embed_tokens.weight': Target(('embed_tokens', 'embedding'), SAME),
             'model.norm.weight': Target(('norm', 'scale'), SAME)}
  for i in range(num_layers):
    hf, layer = f'model.layers.{i}.', f'layers_{i}'
    for name in ('q_proj', 'k_proj', 'v_proj'):
      targets[f'{hf}self_attn.{name}.weight'] = Target((layer, 'self_attn', name, 'kernel'), LINEAR)
      if attention_bias:
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
