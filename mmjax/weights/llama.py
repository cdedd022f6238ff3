"""HF LlamaForCausalLM tensor names <-> mmjax.models.llama parameters (the decoder family's key map, no biases)."""
from mmjax.models.llama import LlamaConfig, LlamaForCausalLM
from mmjax.weights.decoder import family_spec, key_map, layout_key_map

__all__ = ['SPEC', 'key_map', 'layout_key_map']

SPEC = family_spec(LlamaConfig, LlamaForCausalLM)
