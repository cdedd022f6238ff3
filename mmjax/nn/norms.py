"""RMSNorm and LayerNorm over the last axis, with float32 statistics whatever the input dtype."""
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import canonicalize_dtype, promote_dtype
from jax.nn.initializers import Initializer
from jax.typing import DTypeLike


class RMSNorm(nn.Module):
  """scale * x / sqrt(mean(x^2) + eps) over the last axis; x [..., E] -> [..., E].

  As in HF Qwen2RMSNorm, the normalised value is computed in float32 and cast back to x.dtype before it is
  multiplied by `scale`. The product is in `dtype`, or in the promotion of x.dtype and `param_dtype`.
  """
  eps: float = 1e-6
  feature_axis: str = 'embed'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32
  scale_init: Initializer = nn.initializers.ones_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param('scale', nn.with_logical_partitioning(self.scale_init, (self.feature_axis,)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    normed, scale = promote_dtype(normed.astype(x.dtype), scale, dtype=self.dtype)
    return normed * scale


class LayerNorm(nn.Module):
  """(x - mean) / sqrt(var + eps) * scale + bias over the last axis; x [..., E] -> [..., E].

  Everything is computed in float32; the result is cast to `dtype`, or to the promotion of x.dtype and the
  parameter dtype (x.dtype when there are no parameters).
  """
  eps: float = 1e-6
  use_scale: bool = True
  use_bias: bool = True
  feature_axis: str = 'embed'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32
  scale_init: Initializer = nn.initializers.ones_init()
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    y = centred * jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + self.eps)
    params = []
    if self.use_scale:
      scale = self.param('scale', nn.with_logical_partitioning(self.scale_init, (self.feature_axis,)),
                         (x.shape[-1],), self.param_dtype)
      y = y * scale.astype(jnp.float32)
      params.append(scale)
    if self.use_bias:
      bias = self.param('bias', nn.with_logical_partitioning(self.bias_init, (self.feature_axis,)),
                        (x.shape[-1],), self.param_dtype)
      y = y + bias.astype(jnp.float32)
      params.append(bias)
    return y.astype(canonicalize_dtype(x, *params, dtype=self.dtype))
