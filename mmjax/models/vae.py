"""The Stable Diffusion VAE as diffusers' `AutoencoderKL`, channels last.

`vae.apply({'params': p}, images [B, H, W, C_in], method='encode')` -> `DiagonalGaussian` over latents
[B, H/f, W/f, latent_channels] (f = 2 ** (len(block_out_channels) - 1), 8 for SD), `method='decode'` maps latents
back to images [B, H, W, C_out], and `vae.apply(...)` itself is decode(encode(x).mode()) (or a sample of the
posterior, from the 'noise' RNG stream). Images are in [-1, 1]; the diffusion model sees
`config.scale_latents(z)` and the decoder takes `config.unscale_latents(latents)`.

Parameter tree (diffusers' module names, `.{i}.` as `_{i}`):

  encoder/conv_in   encoder/down_blocks_{i}/{resnets_{j}, downsamplers_0/conv}   encoder/mid_block
  encoder/conv_norm_out   encoder/conv_out [3, 3, C, 2 * latent]   quant_conv   post_quant_conv
  decoder/conv_in   decoder/mid_block   decoder/up_blocks_{i}/{resnets_{j}, upsamplers_0/conv}
  decoder/conv_norm_out   decoder/conv_out
  mid_block/{resnets_0, attentions_0/{group_norm, q_proj, k_proj, v_proj, o_proj}, resnets_1}
  resnets_{j}/{norm1, conv1, norm2, conv2, conv_shortcut (when the width changes)}

The convolutional blocks are the UNet's (mmjax.models.diffusers_blocks): kernels [kh, kw, C_in, C_out], float32
GroupNorm statistics, here with eps 1e-6 everywhere.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from mmjax.models.diffusers_blocks import SPATIAL_AXES, Conv2d, Downsample2D, GroupNorm, ResnetBlock2D, Upsample2D
from mmjax.nn.attention import dot_product_attention
from mmjax.nn.linear import DenseGeneral

# diffusers hard-codes these in the VAE's Encoder and Decoder.
GROUP_NORM_EPS = 1e-6
LOGVAR_RANGE = (-30.0, 20.0)
# act_fn values that name SiLU in diffusers' get_activation (the only activation of released VAEs).
SILU_NAMES = ('silu', 'swish')
_FIELDS_FROM_HF = ('in_channels', 'out_channels', 'block_out_channels', 'layers_per_block', 'act_fn',
                   'latent_channels', 'norm_num_groups', 'sample_size', 'scaling_factor', 'shift_factor',
                   'latents_mean', 'latents_std', 'force_upcast', 'use_quant_conv', 'use_post_quant_conv',
                   'mid_block_add_attention')


def _tuple(value: Any) -> Any:
  return tuple(value) if isinstance(value, list) else value


@dataclasses.dataclass(frozen=True)
class AutoencoderKLConfig:
  """The fields of diffusers' AutoencoderKL config (same names and defaults); SD1.5's VAE is
  block_out_channels (128, 256, 512, 512), layers_per_block 2, sample_size 512, scaling_factor 0.18215.

  The down and up block types are implied (DownEncoderBlock2D / UpDecoderBlock2D, one per width).
  scaling_factor, shift_factor, latents_mean, latents_std: how latents are normalised for the diffusion model
    (see `scale_latents`); force_upcast: the pipeline hint that the VAE overflows in float16. Neither changes the
    module.
  """
  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: tuple[int, ...] = (64,)
  layers_per_block: int = 1
  act_fn: str = 'silu'
  latent_channels: int = 4
  norm_num_groups: int = 32
  sample_size: int | tuple[int, int] = 32
  scaling_factor: float = 0.18215
  shift_factor: float | None = None
  latents_mean: tuple[float, ...] | None = None
  latents_std: tuple[float, ...] | None = None
  force_upcast: bool = True
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True

  def __post_init__(self):
    if self.act_fn not in SILU_NAMES:
      raise ValueError(f'Unsupported AutoencoderKL act_fn {self.act_fn!r}; choose one of {list(SILU_NAMES)}.')
    odd = [c for c in self.block_out_channels if c % self.norm_num_groups]
    if not self.block_out_channels or odd:
      raise ValueError(f'AutoencoderKL block_out_channels {list(self.block_out_channels)} must be non-empty multiples '
                       f'of norm_num_groups {self.norm_num_groups}.')
    for key in ('latents_mean', 'latents_std'):
      value = getattr(self, key)
      if value is not None and len(value) != self.latent_channels:
        raise ValueError(f'AutoencoderKL {key} has {len(value)} entries; latent_channels is {self.latent_channels}.')

  @property
  def downsample_factor(self) -> int:
    """Image pixels per latent pixel along each axis."""
    return 2 ** (len(self.block_out_channels) - 1)

  def scale_latents(self, z: jax.Array) -> jax.Array:
    """VAE latents [..., latent_channels] -> the diffusion model's: (z - m) * scaling_factor / s, where m, s are
    latents_mean and latents_std when both are set (SDXL pipelines), else shift_factor (SD3) or 0, and 1."""
    offset, spread = self._moments()
    return (z - offset) * (self.scaling_factor / spread)

  def unscale_latents(self, latents: jax.Array) -> jax.Array:
    """The inverse of `scale_latents`: the diffusion model's latents -> the decoder's input."""
    offset, spread = self._moments()
    return latents * (spread / self.scaling_factor) + offset

  def _moments(self) -> tuple[np.ndarray | float, np.ndarray | float]:
    if self.latents_mean is not None and self.latents_std is not None:
      return np.asarray(self.latents_mean, np.float32), np.asarray(self.latents_std, np.float32)
    return self.shift_factor or 0.0, 1.0

  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any]) -> AutoencoderKLConfig:
    """Reads a diffusers AutoencoderKL config.json dict; block types other than DownEncoderBlock2D /
    UpDecoderBlock2D (one per block_out_channels entry) are refused, naming the key."""
    widths = len(d.get('block_out_channels', cls.block_out_channels))
    for key, block in (('down_block_types', 'DownEncoderBlock2D'), ('up_block_types', 'UpDecoderBlock2D')):
      types = list(d.get(key, [block]))
      if types != [block] * widths:
        raise ValueError(f'AutoencoderKL {key}={types} is not supported (only {widths} x {block!r}, one per '
                         'block_out_channels entry).')
    return cls(**{k: _tuple(d[k]) for k in _FIELDS_FROM_HF if k in d})

  def to_hf_dict(self) -> dict[str, Any]:
    """A diffusers config.json dict."""
    widths = len(self.block_out_channels)
    return {'_class_name': 'AutoencoderKL', **{k: getattr(self, k) for k in _FIELDS_FROM_HF},
            'down_block_types': ['DownEncoderBlock2D'] * widths, 'up_block_types': ['UpDecoderBlock2D'] * widths}


@flax.struct.dataclass
class DiagonalGaussian:
  """diffusers' DiagonalGaussianDistribution, channels last: mean and logvar [B, h, w, C], logvar clipped to
  LOGVAR_RANGE. A pytree, so a jitted `encode` returns it."""
  mean: jax.Array
  logvar: jax.Array

  @classmethod
  def from_moments(cls, moments: jax.Array) -> DiagonalGaussian:
    """moments [B, h, w, 2C]: the mean, then the log-variance."""
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return cls(mean, jnp.clip(logvar, *LOGVAR_RANGE))

  @property
  def std(self) -> jax.Array:
    return jnp.exp(0.5 * self.logvar)

  @property
  def var(self) -> jax.Array:
    return jnp.exp(self.logvar)

  def sample(self, key: jax.Array) -> jax.Array:
    """mean + std * N(0, 1) noise drawn from `key`; [B, h, w, C]."""
    return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)

  def mode(self) -> jax.Array:
    return self.mean

  def kl(self, other: DiagonalGaussian | None = None) -> jax.Array:
    """KL(self || other) per example [B], summed over h, w, C; other=None is N(0, I)."""
    if other is None:
      terms = jnp.square(self.mean) + self.var - 1.0 - self.logvar
    else:
      terms = (jnp.square(self.mean - other.mean) / other.var + self.var / other.var - 1.0 - self.logvar
               + other.logvar)
    return 0.5 * jnp.sum(terms, axis=(1, 2, 3))

  def nll(self, z: jax.Array) -> jax.Array:
    """Negative log-likelihood of z [B, h, w, C] per example [B] (nats)."""
    terms = np.log(2.0 * np.pi) + self.logvar + jnp.square(z - self.mean) / self.var
    return 0.5 * jnp.sum(terms, axis=(1, 2, 3))


class SpatialSelfAttention(nn.Module):
  """The VAE mid-block attention (diffusers Attention with a group norm and a residual, one head of width C over
  the H * W positions): x [B, H, W, C] -> x + o_proj(attention(group_norm(x))) [B, H, W, C]."""
  num_groups: int
  attn_impl: str = 'auto'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, height, width, c = x.shape
    h = GroupNorm(self.num_groups, GROUP_NORM_EPS, dtype=self.dtype, param_dtype=self.param_dtype, name='group_norm')(x)
    h = h.reshape(b, height * width, c)
    dense = functools.partial(DenseGeneral, dtype=self.dtype, param_dtype=self.param_dtype)
    q, k, v = (dense((1, c), ('embed', 'heads', 'head_dim'), name=name)(h) for name in ('q_proj', 'k_proj', 'v_proj'))
    out = dot_product_attention(q, k, v, impl=self.attn_impl)
    out = dense(c, ('heads', 'head_dim', 'embed'), axis=(-2, -1), name='o_proj')(out)
    return nn.with_logical_constraint(x + out.reshape(x.shape), SPATIAL_AXES)


class MidBlock(nn.Module):
  """diffusers UNetMidBlock2D of the VAE: resnet, attention (unless `add_attention` is False), resnet; width kept."""
  num_groups: int
  add_attention: bool = True
  attn_impl: str = 'auto'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = ResnetBlock2D(x.shape[-1], self.num_groups, eps=GROUP_NORM_EPS, **kw, name='resnets_0')(x)
    if self.add_attention:
      x = SpatialSelfAttention(self.num_groups, self.attn_impl, **kw, name='attentions_0')(x)
    return ResnetBlock2D(x.shape[-1], self.num_groups, eps=GROUP_NORM_EPS, **kw, name='resnets_1')(x)


class DownEncoderBlock2D(nn.Module):
  """num_layers resnets to `features` channels, then (add_downsample) Downsample2D: [B, H, W, C] ->
  [B, H/2, W/2, features]."""
  features: int
  num_layers: int
  num_groups: int
  add_downsample: bool = True
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for j in range(self.num_layers):
      x = ResnetBlock2D(self.features, self.num_groups, eps=GROUP_NORM_EPS, **kw, name=f'resnets_{j}')(x)
    return Downsample2D(self.features, padding=0, **kw, name='downsamplers_0')(x) if self.add_downsample else x


class UpDecoderBlock2D(nn.Module):
  """num_layers resnets to `features` channels, then (add_upsample) Upsample2D: [B, H, W, C] ->
  [B, 2H, 2W, features]."""
  features: int
  num_layers: int
  num_groups: int
  add_upsample: bool = True
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for j in range(self.num_layers):
      x = ResnetBlock2D(self.features, self.num_groups, eps=GROUP_NORM_EPS, **kw, name=f'resnets_{j}')(x)
    return Upsample2D(self.features, **kw, name='upsamplers_0')(x) if self.add_upsample else x


class Encoder(nn.Module):
  """images [B, H, W, in_channels] -> moments [B, H/f, W/f, 2 * latent_channels] (before quant_conv)."""
  config: AutoencoderKLConfig
  attn_impl: str = 'auto'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = Conv2d(cfg.block_out_channels[0], **kw, name='conv_in')(x)
    last = len(cfg.block_out_channels) - 1
    for i, width in enumerate(cfg.block_out_channels):
      x = DownEncoderBlock2D(width, cfg.layers_per_block, cfg.norm_num_groups, add_downsample=i < last, **kw,
                             name=f'down_blocks_{i}')(x)
    x = MidBlock(cfg.norm_num_groups, cfg.mid_block_add_attention, self.attn_impl, **kw, name='mid_block')(x)
    x = jax.nn.silu(GroupNorm(cfg.norm_num_groups, GROUP_NORM_EPS, **kw, name='conv_norm_out')(x))
    return Conv2d(2 * cfg.latent_channels, **kw, name='conv_out')(x)


class Decoder(nn.Module):
  """latents [B, h, w, latent_channels] (after post_quant_conv) -> images [B, h * f, w * f, out_channels]."""
  config: AutoencoderKLConfig
  attn_impl: str = 'auto'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    widths = cfg.block_out_channels[::-1]
    x = Conv2d(widths[0], **kw, name='conv_in')(z)
    x = MidBlock(cfg.norm_num_groups, cfg.mid_block_add_attention, self.attn_impl, **kw, name='mid_block')(x)
    for i, width in enumerate(widths):
      x = UpDecoderBlock2D(width, cfg.layers_per_block + 1, cfg.norm_num_groups, add_upsample=i < len(widths) - 1,
                           **kw, name=f'up_blocks_{i}')(x)
    x = jax.nn.silu(GroupNorm(cfg.norm_num_groups, GROUP_NORM_EPS, **kw, name='conv_norm_out')(x))
    return Conv2d(cfg.out_channels, **kw, name='conv_out')(x)


class AutoencoderKL(nn.Module):
  """encode: images [B, H, W, in_channels] (H, W multiples of config.downsample_factor) -> DiagonalGaussian over
  [B, H/f, W/f, latent_channels]; decode: latents -> images [B, H, W, out_channels]; __call__: both.
  """
  config: AutoencoderKLConfig
  attn_impl: str = 'auto'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  def setup(self):
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder = Encoder(cfg, self.attn_impl, **kw)
    self.decoder = Decoder(cfg, self.attn_impl, **kw)
    if cfg.use_quant_conv:
      self.quant_conv = Conv2d(2 * cfg.latent_channels, kernel_size=1, **kw)
    if cfg.use_post_quant_conv:
      self.post_quant_conv = Conv2d(cfg.latent_channels, kernel_size=1, **kw)

  def encode(self, sample: jax.Array) -> DiagonalGaussian:
    cfg, f = self.config, self.config.downsample_factor
    if sample.ndim != 4 or sample.shape[-1] != cfg.in_channels or sample.shape[1] % f or sample.shape[2] % f:
      raise ValueError(f'AutoencoderKL.encode expects images [B, H, W, {cfg.in_channels}] with H and W multiples of '
                       f'{f}, got shape {sample.shape}.')
    moments = self.encoder(sample)
    if cfg.use_quant_conv:
      moments = self.quant_conv(moments)
    return DiagonalGaussian.from_moments(moments)

  def decode(self, latents: jax.Array) -> jax.Array:
    cfg = self.config
    if latents.ndim != 4 or latents.shape[-1] != cfg.latent_channels:
      raise ValueError(f'AutoencoderKL.decode expects latents [B, h, w, {cfg.latent_channels}], got shape '
                       f'{latents.shape}.')
    if cfg.use_post_quant_conv:
      latents = self.post_quant_conv(latents)
    return self.decoder(latents)

  def __call__(self, sample: jax.Array, *, sample_posterior: bool = False) -> jax.Array:
    """decode(encode(sample).mode()), or of a posterior sample drawn from the 'noise' RNG stream."""
    posterior = self.encode(sample)
    z = posterior.sample(self.make_rng('noise')) if sample_posterior else posterior.mode()
    return self.decode(z)

