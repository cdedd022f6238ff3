"""ResNet-50 as torchvision builds it (bottleneck v1.5: the stride sits on the 3x3 conv), channels last, returning
the C2..C5 feature maps; BatchNorm with frozen statistics (inference) or batch statistics (training).

Usage:

  config = ResNetConfig()                                  # ResNet-50; ResNetConfig(num_classes=1000) adds `fc`
  model = ResNet(config)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))  # {'params', 'batch_stats'}
  c2, c3, c4, c5 = model.apply(variables, pixels)          # [B, 56, 56, 256] [B, 28, 28, 512] [B, 14, 14, 1024]
                                                           # [B, 7, 7, 2048] at 224 px (strides 4/8/16/32)
  feats, updates = model.apply(variables, pixels, train=True, mutable=['batch_stats'])  # batch statistics

Weights: `mmjax.weights.resnet.load_torchvision(path_or_state_dict, config)` reads a torchvision state dict
(conv1, bn1, layer{1-4}.{j}.{conv,bn}{1-3}, layer{i}.0.downsample.{0,1}, fc) from a .pth (torch.load
weights_only=True, when torch is installed) or a .safetensors file. Tiny widths for tests: ResNetConfig(stem_width=8,
widths=(4, 8, 16, 32), depths=(2, 1, 1, 1)).

Parameter tree (torchvision's names, `layer1.0` as `layer1_0`): conv1/kernel [7, 7, 3, 64], bn1/{scale, bias} (and
batch_stats bn1/{mean, var}), layer{i}_{j}/{conv1, bn1, conv2, bn2, conv3, bn3, downsample_conv, downsample_bn},
fc/{kernel [2048, classes], bias}.
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmjax.models.diffusers_blocks import Conv2d
from mmjax.nn.linear import Dense


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
  """depths: bottleneck blocks per stage (ResNet-50: 3/4/6/3); widths: the 3x3 convs' channels per stage (the
  stage outputs are expansion times these); num_classes: None for the backbone alone, else the `fc` head's classes.
  bn_momentum is torch's (running = (1 - m) * running + m * batch); bn_eps torch's eps."""
  depths: tuple[int, ...] = (3, 4, 6, 3)
  widths: tuple[int, ...] = (64, 128, 256, 512)
  stem_width: int = 64
  expansion: int = 4
  num_classes: int | None = None
  bn_eps: float = 1e-5
  bn_momentum: float = 0.1

  def __post_init__(self):
    if len(self.depths) != len(self.widths):
      raise ValueError(f'ResNetConfig: depths {self.depths} and widths {self.widths} must have one entry per stage.')

  @property
  def out_channels(self) -> tuple[int, ...]:
    return tuple(w * self.expansion for w in self.widths)


class BatchNorm(nn.Module):
  """torch BatchNorm2d over channels last: x [..., C] -> [..., C].

  train=False normalises with the running statistics (batch_stats mean, var). train=True normalises with the
  batch's mean and biased variance over every axis but the last and, as torch does, updates the running mean with
  the batch mean and the running variance with the unbiased batch variance; under jit over a sharded batch the
  statistics are those of the global batch. Statistics are float32.
  """
  eps: float = 1e-5
  momentum: float = 0.1
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    channels = x.shape[-1]
    scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones_init(), ('embed',)), (channels,),
                       self.param_dtype)
    bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros_init(), ('embed',)), (channels,),
                      self.param_dtype)
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (channels,), jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (channels,), jnp.float32)
    x32 = x.astype(jnp.float32)
    if train:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x32, axis=axes)
      var = jnp.mean(jnp.square(x32 - mean), axis=axes)
      if not self.is_initializing():
        count = x32.size // channels
        m = self.momentum
        running_mean.value = (1 - m) * running_mean.value + m * mean
        running_var.value = (1 - m) * running_var.value + m * var * count / max(count - 1, 1)
    else:
      mean, var = running_mean.value, running_var.value
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(self.dtype or jnp.promote_types(x.dtype, self.param_dtype))


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (stride here, v1.5) -> 1x1 (x expansion), each with BatchNorm, ReLU after the residual sum; a
  1x1 conv + BatchNorm projects the shortcut when the shape changes. [B, H, W, C] -> [B, H / s, W / s, 4 * width]."""
  width: int
  stride: int
  config: ResNetConfig
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    cfg = self.config
    conv = functools.partial(Conv2d, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
    norm = functools.partial(BatchNorm, cfg.bn_eps, cfg.bn_momentum, self.dtype, self.param_dtype)
    out_width = self.width * cfg.expansion
    h = nn.relu(norm(name='bn1')(conv(self.width, 1, name='conv1')(x), train))
    h = nn.relu(norm(name='bn2')(conv(self.width, 3, self.stride, 1, name='conv2')(h), train))
    h = norm(name='bn3')(conv(out_width, 1, name='conv3')(h), train)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != out_width:
      shortcut = norm(name='downsample_bn')(conv(out_width, 1, self.stride, 0, name='downsample_conv')(x), train)
    return nn.relu(h + shortcut)


class ResNet(nn.Module):
  """pixel_values [B, H, W, 3] (channels last, ImageNet-normalised) -> (C2, C3, C4, C5), C_k [B, H / 2^k,
  W / 2^k, expansion * widths[k - 2]] (ceil division at odd sizes, as torch)."""
  config: ResNetConfig
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  def setup(self):
    cfg = self.config
    self.conv1 = Conv2d(cfg.stem_width, 7, 2, 3, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
    self.bn1 = BatchNorm(cfg.bn_eps, cfg.bn_momentum, self.dtype, self.param_dtype)
    for i, (depth, width) in enumerate(zip(cfg.depths, cfg.widths)):
      # A list attribute `layer{i}` names its blocks layer{i}_0, layer{i}_1, ... (torchvision's layer{i}.{j}).
      setattr(self, f'layer{i + 1}', [Bottleneck(width, 2 if j == 0 and i > 0 else 1, cfg, self.dtype,
                                                 self.param_dtype) for j in range(depth)])
    if cfg.num_classes is not None:
      self.fc = Dense(cfg.num_classes, ('embed', 'vocab'), dtype=self.dtype, param_dtype=self.param_dtype)

  def __call__(self, pixel_values: jax.Array, train: bool = False) -> tuple[jax.Array, ...]:
    if pixel_values.ndim != 4 or pixel_values.shape[-1] != 3:
      raise ValueError(f'pixel_values must be [B, H, W, 3] (channels last), got shape {pixel_values.shape}.')
    x = nn.relu(self.bn1(self.conv1(pixel_values), train))
    x = nn.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
    features = []
    for i in range(len(self.config.depths)):
      for block in getattr(self, f'layer{i + 1}'):
        x = block(x, train)
      features.append(nn.with_logical_constraint(x, ('batch', None, None, 'embed')))
    if self.is_initializing() and self.config.num_classes is not None:
      self.fc(jnp.mean(x, axis=(1, 2)))
    return tuple(features)

  def classify(self, pixel_values: jax.Array, train: bool = False) -> jax.Array:
    """ImageNet logits [B, num_classes]: the `fc` head on the global average of C5 (needs config.num_classes)."""
    if self.config.num_classes is None:
      raise ValueError('This ResNetConfig has num_classes=None: there is no fc head.')
    return self.fc(jnp.mean(self(pixel_values, train)[-1], axis=(1, 2)))
