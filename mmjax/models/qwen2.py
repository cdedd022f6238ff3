"""Qwen2 decoder-only language model (HF `Qwen2ForCausalLM`): the decoder family (`mmjax.models.decoder`) with q/k/v
bias, RoPE theta 1e6 by default and optionally tied embeddings, with an explicit KV cache for decoding.

The parameter tree is the family's (see decoder.py): embed_tokens, layers_{i}/{self_attn, mlp, input_layernorm,
post_attention_layernorm}, norm, and lm_head unless the embeddings are tied.
"""
import dataclasses
from collections.abc import Mapping
from typing import Any

from mmjax.models.decoder import (
  CausalLMOutput,
  DecoderConfig,
  DecoderForCausalLM,
  DecoderLayer,
  hf_fields,
  hf_rope_parameters,
  read_hf_dict,
)

__all__ = ['CausalLMOutput', 'Qwen2Config', 'Qwen2DecoderLayer', 'Qwen2ForCausalLM']

# Qwen2's layer is the family's layer; its q/k/v bias comes from Qwen2Config.attention_bias.
Qwen2DecoderLayer = DecoderLayer


@dataclasses.dataclass(frozen=True)
class Qwen2Config(DecoderConfig):
  """The fields of HF `Qwen2Config` that change the computation (full attention, SiLU, q/k/v bias)."""
  rope_theta: float = 1e6
  max_position_embeddings: int = 32768
  attention_bias: bool = True

  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any]) -> 'Qwen2Config':
    """Reads an HF config.json dict (transformers 4.x `rope_theta`/`rope_scaling` or 5.x `rope_parameters`).

    Raises ValueError for required fields that are missing and for variants this module does not implement
    (sliding-window attention, a RoPE type other than default/linear/llama3, a non-SiLU MLP, a custom head_dim).
    """
    fields, problems = read_hf_dict(d, 'Qwen2', {'rms_norm_eps': 1e-6, 'max_position_embeddings': 32768})
    if d.get('use_sliding_window'):
      problems.insert(0, 'use_sliding_window=true')
    if problems:
      raise ValueError(f'Unsupported Qwen2 config: {"; ".join(problems)}.')
    return cls(**fields)

  def to_hf_dict(self) -> dict[str, Any]:
    """An HF config.json dict that transformers 4.x (rope_theta, rope_scaling) and 5.x (rope_parameters) read."""
    rope = hf_rope_parameters(self)
    return {'model_type': 'qwen2', 'architectures': ['Qwen2ForCausalLM'], **hf_fields(self), 'hidden_act': 'silu',
            'use_sliding_window': False, 'rope_parameters': rope,
            'rope_scaling': rope if self.rope_scaling is not None else None}


class Qwen2ForCausalLM(DecoderForCausalLM):
  """Token ids or embeddings -> next-token logits, optionally reading and extending a KV cache (see
  `DecoderForCausalLM.__call__`).

  Fields (dtype, param_dtype, attn_impl, remat_policy) as in `DecoderForCausalLM`.
  """
  config: Qwen2Config
