"""Convolutional blocks of the diffusers UNet and VAE, channels last: GroupNorm, Conv2d, ResnetBlock2D,
Downsample2D and Upsample2D.

Parameter names follow diffusers (norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut; a sampler's `conv`), so
a key map reads like a dictionary. Conv kernels are [kh, kw, C_in, C_out] (a torch weight [C_out, C_in, kh, kw]
transposed by (2, 3, 1, 0)); every parameter carries logical axis names.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import canonicalize_dtype, promote_dtype
from jax.nn.initializers import Initializer
from jax.typing import DTypeLike

from mmjax.nn.linear import Dense, default_kernel_init

# [B, H, W, C] activations.
SPATIAL_AXES = ('batch', None, None, 'embed')
# Explicit ((top, bottom), (left, right)) padding, or the same number on every side.
Padding = int | tuple[tuple[int, int], tuple[int, int]]


class GroupNorm(nn.Module):
  """torch GroupNorm over channels last: x [B, ..., C] normalised per example over all positions and each block
  of C / num_groups consecutive channels (torch's grouping in NCHW), then scale * x + bias per channel.

  Statistics and the affine step are float32; the result is cast to `dtype` (or the promotion of x.dtype and the
  parameter dtype).
  """
  num_groups: int
  eps: float = 1e-5
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    if channels % self.num_groups:
      raise ValueError(f'GroupNorm: {channels} channels are not divisible into {self.num_groups} groups.')
    scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones_init(), ('embed',)), (channels,),
                       self.param_dtype)
    bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros_init(), ('embed',)), (channels,),
                      self.param_dtype)
    grouped = x.astype(jnp.float32).reshape(x.shape[0], -1, self.num_groups, channels // self.num_groups)
    centred = grouped - jnp.mean(grouped, axis=(1, 3), keepdims=True)
    normed = centred * jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=(1, 3), keepdims=True) + self.eps)
    y = normed.reshape(x.shape) * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(canonicalize_dtype(x, scale, bias, dtype=self.dtype))


class Conv2d(nn.Module):
  """torch Conv2d over channels last: x [B, H, W, C_in] -> [B, H', W', features].

  padding: an int for every side (None: (kernel_size - 1) // 2, 'same' at stride 1), or ((top, bottom),
  (left, right)) such as diffusers' asymmetric ((0, 1), (0, 1)) before a stride-2 VAE downsampling conv.
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: Padding | None = None
  use_bias: bool = True
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32
  kernel_init: Initializer = default_kernel_init

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    axes = ('conv_h', 'conv_w', 'conv_in', 'embed')
    kernel = self.param('kernel', nn.with_logical_partitioning(self.kernel_init, axes),
                        (k, k, x.shape[-1], self.features), self.param_dtype)
    bias = None
    if self.use_bias:
      bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros_init(), ('embed',)),
                        (self.features,), self.param_dtype)
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    pad = (k - 1) // 2 if self.padding is None else self.padding
    pad = ((pad, pad), (pad, pad)) if isinstance(pad, int) else pad
    y = jax.lax.conv_general_dilated(x, kernel, window_strides=(self.strides, self.strides), padding=pad,
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y if bias is None else y + bias


class ResnetBlock2D(nn.Module):
  """diffusers ResnetBlock2D ('default' time embedding, SiLU): x [B, H, W, C_in], temb [B, T] or None ->
  [B, H, W, out_channels].

  h = conv1(silu(norm1(x))) (+ time_emb_proj(silu(temb)) per channel); h = conv2(silu(norm2(h))); the result is
  (shortcut(x) + h) / output_scale_factor, where shortcut is a 1x1 conv when C_in != out_channels. Without temb
  (the VAE) there is no time_emb_proj.
  """
  out_channels: int
  groups: int = 32
  groups_out: int | None = None
  eps: float = 1e-6
  output_scale_factor: float = 1.0
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
    norm = functools.partial(GroupNorm, eps=self.eps, dtype=self.dtype, param_dtype=self.param_dtype)
    conv = functools.partial(Conv2d, self.out_channels, dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.with_logical_constraint(x, SPATIAL_AXES)
    h = conv(3, name='conv1')(jax.nn.silu(norm(self.groups, name='norm1')(x)))
    if temb is not None:
      t = Dense(self.out_channels, ('mlp', 'embed'), dtype=self.dtype, param_dtype=self.param_dtype,
                name='time_emb_proj')(jax.nn.silu(temb))
      h = h + t[:, None, None, :]
    h = conv(3, name='conv2')(jax.nn.silu(norm(self.groups_out or self.groups, name='norm2')(h)))
    if x.shape[-1] != self.out_channels:
      x = conv(1, name='conv_shortcut')(x)
    return nn.with_logical_constraint((x + h) / self.output_scale_factor, SPATIAL_AXES)


class Downsample2D(nn.Module):
  """diffusers Downsample2D with its conv: a stride-2 3x3 conv, x [B, H, W, C] -> [B, ceil(H/2), ceil(W/2),
  features]. padding 0 means diffusers' asymmetric zero padding of one row at the bottom and one column at the
  right (the VAE); otherwise that many on every side (the UNet's downsample_padding, 1)."""
  features: int
  padding: int = 1
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    padding = ((0, 1), (0, 1)) if self.padding == 0 else self.padding
    return Conv2d(self.features, 3, strides=2, padding=padding, dtype=self.dtype, param_dtype=self.param_dtype,
                  name='conv')(x)


class Upsample2D(nn.Module):
  """diffusers Upsample2D with its conv: nearest-neighbour x2 then a 3x3 conv, x [B, H, W, C] ->
  [B, 2H, 2W, features]."""
  features: int
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return Conv2d(self.features, 3, dtype=self.dtype, param_dtype=self.param_dtype, name='conv')(x)
