"""mmjax.nn: flax.linen layers with logical axis names, shared by every model."""
from mmjax.nn.attention import ATTENTION_IMPLS, AttentionImpl, dot_product_attention, resolve_impl, xla_attention
from mmjax.nn.embeddings import PatchEmbed, sincos_2d_position_embedding, timestep_embedding
from mmjax.nn.linear import Dense, DenseGeneral
from mmjax.nn.mlp import ACTIVATIONS, Mlp, SwiGLU, get_activation
from mmjax.nn.multihead_attention import MultiHeadAttention
from mmjax.nn.norms import LayerNorm, RMSNorm
from mmjax.nn.rope import apply_rope, rope_frequencies
from mmjax.nn.vit import Encoder, EncoderBlock

__all__ = [
    'ACTIVATIONS', 'ATTENTION_IMPLS', 'AttentionImpl', 'Dense', 'DenseGeneral', 'Encoder', 'EncoderBlock',
    'LayerNorm', 'Mlp', 'MultiHeadAttention', 'PatchEmbed', 'RMSNorm', 'SwiGLU', 'apply_rope',
    'dot_product_attention', 'get_activation', 'resolve_impl', 'rope_frequencies', 'sincos_2d_position_embedding',
    'timestep_embedding', 'xla_attention',
]
