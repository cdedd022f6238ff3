"""A small pre-LN ViT classifier: patch embedding, learned positions, encoder, mean pool, head."""
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmjax.nn.embeddings import PatchEmbed
from mmjax.nn.linear import Dense
from mmjax.nn.vit import Encoder


class ViTClassifier(nn.Module):
  """images [B, H, W, C] in [0, 1] -> logits [B, num_classes] (float32)."""
  num_classes: int
  patch: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  remat: bool = False
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    x = PatchEmbed(self.patch, self.width, dtype=self.dtype, param_dtype=self.param_dtype,
                   name='patch_embed')(images * 2.0 - 1.0)
    pos = self.param('pos_embedding', nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ('length', 'embed')), x.shape[1:], self.param_dtype)
    x = x + pos.astype(x.dtype)
    x = Encoder(self.depth, self.num_heads, self.mlp_dim, dropout_rate=self.dropout, remat=self.remat,
                dtype=self.dtype, param_dtype=self.param_dtype, name='encoder')(x, deterministic=not train)
    x = x.mean(axis=1)
    logits = Dense(self.num_classes, kernel_axes=('embed', 'vocab'), dtype=self.dtype,
                   param_dtype=self.param_dtype, kernel_init=nn.initializers.zeros, name='head')(x)
    return logits.astype(jnp.float32)
