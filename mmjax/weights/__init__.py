"""mmjax.weights: HF safetensors import and export with explicit per-model key maps."""
from mmjax.weights.convert import hf_to_orbax, orbax_to_hf
from mmjax.weights.key_map import KeyMap, ModelSpec, Target, Transform
from mmjax.weights.pretrained import from_pretrained, save_pretrained
from mmjax.weights.registry import MODEL_SPECS

__all__ = ['MODEL_SPECS', 'KeyMap', 'ModelSpec', 'Target', 'Transform', 'from_pretrained', 'hf_to_orbax', 'orbax_to_hf',
           'save_pretrained']
