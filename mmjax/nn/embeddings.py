"""Sinusoidal timestep embeddings, fixed 2-D sin-cos position embeddings and the patch embedding of ViT/DiT."""
import math

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.dtypes import promote_dtype
from jax.nn.initializers import Initializer
from jax.typing import DTypeLike

from mmjax.nn.linear import default_kernel_init


def timestep_embedding(t: jax.Array, dim: int, *, max_period: float = 10000.0, flip_sin_to_cos: bool = False,
                       downscale_freq_shift: float = 1.0, scale: float = 1.0) -> jax.Array:
  """Sinusoidal embedding of (possibly fractional) timesteps t [N] -> float32 [N, dim].

  Same semantics as diffusers' `get_timestep_embedding`: frequencies exp(-log(max_period) * i / (dim//2 - shift))
  for i < dim//2, output [sin, cos] (or [cos, sin] with flip_sin_to_cos) of scale * t * freq, and one zero
  column appended when dim is odd.
  """
  if t.ndim != 1:
    raise ValueError(f'timestep_embedding expects t [N], got shape {t.shape}.')
  half = dim // 2
  if half - downscale_freq_shift == 0:
    raise ValueError(f'dim={dim} with downscale_freq_shift={downscale_freq_shift} divides by zero.')
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - downscale_freq_shift)
  angles = scale * (t.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :])
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def sincos_2d_position_embedding(dim: int, grid_size: tuple[int, int], *, base_size: int | None = None,
                                 interpolation_scale: float = 1.0) -> jax.Array:
  """Fixed 2-D sin-cos position embedding for a row-major [H, W] grid of patches -> float32 [H * W, dim].

  As in MAE, DiT and diffusers' `get_2d_sincos_pos_embed`: the first dim/2 channels embed the column index, the
  last dim/2 the row index, each as [sin, cos] with frequencies 10000^(-2i/(dim/2)). A coordinate along an axis of
  length n is index * base_size / n / interpolation_scale (base_size=None keeps the index).
  """
  if dim % 4:
    raise ValueError(f'sincos_2d_position_embedding needs dim divisible by 4, got {dim}.')

  def axis_coords(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64) * ((base_size or n) / n) / interpolation_scale

  def embed_1d(coords: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000.0 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    angles = np.outer(coords, omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  rows, cols = np.meshgrid(axis_coords(grid_size[0]), axis_coords(grid_size[1]), indexing='ij')
  emb = np.concatenate([embed_1d(cols.reshape(-1)), embed_1d(rows.reshape(-1))], axis=1)
  return jnp.asarray(emb, dtype=jnp.float32)


class PatchEmbed(nn.Module):
  """Non-overlapping patch projection (a conv with kernel = stride = patch_size).

  x [B, H, W, C] (channels last) -> [B, (H/ph) * (W/pw), features] when `flatten`, else [B, H/ph, W/pw, features].
  kernel [ph, pw, C, features], i.e. a torch Conv2d weight [features, C, ph, pw] transposed by (2, 3, 1, 0).
  drop_remainder: accept H, W that the patch does not divide and drop the last H % ph rows and W % pw columns, as
  torch's Conv2d does (SigLIP-so400m: 384 px, patch 14 -> 27 x 27 patches); otherwise such a shape is an error.
  """
  patch_size: int | tuple[int, int]
  features: int
  use_bias: bool = True
  flatten: bool = True
  drop_remainder: bool = False
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32
  kernel_init: Initializer = default_kernel_init
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = (self.patch_size,) * 2 if isinstance(self.patch_size, int) else self.patch_size
    if x.ndim != 4 or (not self.drop_remainder and (x.shape[1] % ph or x.shape[2] % pw)):
      raise ValueError(f'PatchEmbed expects [B, H, W, C] with H % {ph} == 0 and W % {pw} == 0, '
                       f'got shape {x.shape}.')
    kernel = self.param('kernel', nn.with_logical_partitioning(
        self.kernel_init, ('conv_h', 'conv_w', 'conv_in', 'embed')), (ph, pw, x.shape[-1], self.features),
                        self.param_dtype)
    bias = None
    if self.use_bias:
      bias = self.param('bias', nn.with_logical_partitioning(self.bias_init, ('embed',)), (self.features,),
                        self.param_dtype)
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = jax.lax.conv_general_dilated(x, kernel, window_strides=(ph, pw), padding='VALID',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if bias is not None:
      y = y + bias
    if not self.flatten:
      return y
    y = einops.rearrange(y, 'b h w e -> b (h w) e')
    return nn.with_logical_constraint(y, ('batch', 'length', 'embed'))
