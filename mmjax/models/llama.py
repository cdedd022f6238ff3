"""Llama decoder-only language model (HF `LlamaForCausalLM`: Llama-2, Llama-3, 3.1, 3.2, CodeLlama): the decoder
family (`mmjax.models.decoder`) without biases, with RoPE scaled as Llama-3.1 (`llama3`) or linearly when the
checkpoint says so, and optionally tied embeddings (Llama-3.2 1B/3B). The parameter tree is the family's.
"""
import dataclasses
from collections.abc import Mapping
from typing import Any

from mmjax.models.decoder import DecoderConfig, DecoderForCausalLM, hf_fields, hf_rope_parameters, read_hf_dict


@dataclasses.dataclass(frozen=True)
class LlamaConfig(DecoderConfig):
  """The fields of HF `LlamaConfig` that change the computation (no biases, SiLU MLP, optionally scaled RoPE)."""

  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any]) -> 'LlamaConfig':
    """Reads an HF config.json dict (transformers 4.x `rope_theta`/`rope_scaling` or 5.x `rope_parameters`).

    Raises ValueError for required fields that are missing and for variants this module does not implement
    (attention or MLP biases, a RoPE type other than default/linear/llama3, a non-SiLU MLP, a custom head_dim).
    """
    fields, problems = read_hf_dict(d, 'Llama', {'rms_norm_eps': 1e-6, 'max_position_embeddings': 2048})
    problems += [f'{key}=true' for key in ('attention_bias', 'mlp_bias') if d.get(key)]
    if problems:
      raise ValueError(f'Unsupported Llama config: {"; ".join(problems)}.')
    return cls(**fields)

  def to_hf_dict(self) -> dict[str, Any]:
    """An HF config.json dict that transformers 4.x (rope_theta, rope_scaling) and 5.x (rope_parameters) read."""
    rope = hf_rope_parameters(self)
    return {'model_type': 'llama', 'architectures': ['LlamaForCausalLM'], **hf_fields(self), 'hidden_act': 'silu',
            'attention_bias': False, 'mlp_bias': False, 'rope_parameters': rope,
            'rope_scaling': rope if self.rope_scaling is not None else None}


class LlamaForCausalLM(DecoderForCausalLM):
  """Token ids or embeddings -> next-token logits, optionally reading and extending a KV cache (see
  `DecoderForCausalLM.__call__`); fields as in `DecoderForCausalLM`."""
  config: LlamaConfig
