"""HF Qwen2ForCausalLM tensor names <-> mmjax.models.qwen2 parameters (the decoder family's key map, with biases)."""
from mmjax.models.qwen2 import Qwen2Config, Qwen2ForCausalLM
from mmjax.weights.decoder import family_spec, key_map, layout_key_map

__all__ = ['SPEC', 'key_map', 'layout_key_map']

SPEC = family_spec(Qwen2Config, Qwen2ForCausalLM)
