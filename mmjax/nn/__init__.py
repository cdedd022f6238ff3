"""mmjax.nn: flax.linen layers with logical axis names, shared by every model."""
from mmjax import lazy_exports

# submodule -> the names it exports; a name's submodule is imported on its first use (mmjax.lazy_exports)
_EXPORTS = {
  'attention': ('ATTENTION_IMPLS', 'AttentionImpl', 'dot_product_attention', 'resolve_impl', 'xla_attention'),
  'embeddings': ('PatchEmbed', 'sincos_2d_position_embedding', 'timestep_embedding'),
  'linear': ('Dense', 'DenseGeneral'),
  'mlp': ('ACTIVATIONS', 'Mlp', 'SwiGLU', 'get_activation'),
  'multihead_attention': ('MultiHeadAttention',),
  'norms': ('LayerNorm', 'RMSNorm'),
  'rope': ('apply_rope', 'rope_frequencies'),
  'vit': ('Encoder', 'EncoderBlock'),
}
__all__ = [name for names in _EXPORTS.values() for name in names]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
