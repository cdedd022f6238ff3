"""Pre-LN transformer encoder of ViT/SigLIP/CLIP towers: `EncoderBlock` (HF ViTLayer) and a stack of them."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmjax.nn.mlp import Mlp
from mmjax.nn.multihead_attention import MultiHeadAttention
from mmjax.nn.norms import LayerNorm

_AXES = ('batch', 'length', 'embed')


class EncoderBlock(nn.Module):
  """x + drop(attention(layernorm_before(x))), then + drop(mlp(layernorm_after(.))); x [B, S, E] -> [B, S, E].

  Dropout draws from the 'dropout' RNG stream when deterministic is False. `mask` is a boolean attention mask
  broadcastable to [B, H, S, S] (True = may attend).
  """
  num_heads: int
  mlp_dim: int
  head_dim: int | None = None
  activation: str = 'gelu'
  dropout_rate: float = 0.0
  layer_norm_eps: float = 1e-6
  qkv_bias: bool = True
  attn_impl: str = 'auto'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
    x = nn.with_logical_constraint(x, _AXES)
    norm = functools.partial(LayerNorm, eps=self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
    h = norm(name='layernorm_before')(x)
    h = MultiHeadAttention(self.num_heads, self.head_dim, qkv_bias=self.qkv_bias, out_bias=True,
                           attn_impl=self.attn_impl, dtype=self.dtype, param_dtype=self.param_dtype,
                           name='attention')(h, mask=mask)
    x = x + nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    x = nn.with_logical_constraint(x, _AXES)
    h = norm(name='layernorm_after')(x)
    h = Mlp(self.mlp_dim, activation=self.activation, dtype=self.dtype, param_dtype=self.param_dtype,
            name='mlp')(h)
    x = x + nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return nn.with_logical_constraint(x, _AXES)


# static_argnums counts self as 0: `deterministic` must stay a Python bool inside the rematerialised block.
_RematEncoderBlock = nn.remat(EncoderBlock, static_argnums=(3,))


class Encoder(nn.Module):
  """`depth` EncoderBlocks (named layers_{i}), then an optional final LayerNorm 'layernorm'; [B,S,E] -> [B,S,E].

  remat=True recomputes each block's activations in the backward pass instead of storing them.
  """
  depth: int
  num_heads: int
  mlp_dim: int
  head_dim: int | None = None
  activation: str = 'gelu'
  dropout_rate: float = 0.0
  layer_norm_eps: float = 1e-6
  qkv_bias: bool = True
  attn_impl: str = 'auto'
  remat: bool = False
  final_norm: bool = True
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
    block_cls = _RematEncoderBlock if self.remat else EncoderBlock
    for i in range(self.depth):
      x = block_cls(self.num_heads, self.mlp_dim, head_dim=self.head_dim, activation=self.activation,
                    dropout_rate=self.dropout_rate, layer_norm_eps=self.layer_norm_eps, qkv_bias=self.qkv_bias,
                    attn_impl=self.attn_impl, dtype=self.dtype, param_dtype=self.param_dtype,
                    name=f'layers_{i}')(x, mask, deterministic)
    if self.final_norm:
      x = LayerNorm(eps=self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name='layernorm')(x)
    return x
