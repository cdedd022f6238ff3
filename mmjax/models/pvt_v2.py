"""PVTv2 (Wang et al. 2021, HF `PvtV2Model` / `PvtV2Backbone`, timm `pvt_v2_b*`): four stages of overlapping
patch embedding, spatial-reduction attention blocks and a depthwise-conv MLP; returns every stage's feature map.

Usage (channels last; H, W need not be multiples of 32):

  config = PvtV2Config.variant('b0')                        # or PvtV2Config(hidden_sizes=..., depths=...)
  model = PvtV2Model(config)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  c1, c2, c3, c4 = model.apply(variables, pixels)           # [B, 56, 56, 32] [B, 28, 28, 64] [B, 14, 14, 160]
                                                            # [B, 7, 7, 256] for b0 at 224 px (strides 4/8/16/32)

Weights: `mmjax.weights.from_pretrained(hf_dir)` for an HF PvtV2Model / PvtV2Backbone / PvtV2ForImageClassification
folder (model_type 'pvt_v2'), `mmjax.weights.pvt_v2.load_timm(path_or_state_dict, config)` for timm or original
whai362/PVT state dicts (those use LayerNorm eps 1e-5 in the patch embeddings and the reduction norms: set
`embed_layer_norm_eps=1e-5`, as `PvtV2Config.variant(..., timm=True)` does).

Parameter tree (names follow HF):
  layers_{i}/patch_embedding/{proj/{kernel [k, k, C_in, E], bias}, layer_norm}
  layers_{i}/blocks_{j}/{layer_norm_1, attention/{query, key, value: kernel [E, H, D]; proj: kernel [H, D, E];
                         spatial_reduction: kernel [sr, sr, E, E]; layer_norm}, layer_norm_2,
                         mlp/{dense1, dwconv/{kernel [3, 3, 1, M], bias}, dense2}}
  layers_{i}/layer_norm
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax.typing import DTypeLike

from mmjax.models.diffusers_blocks import Conv2d
from mmjax.nn.attention import dot_product_attention
from mmjax.nn.linear import Dense, DenseGeneral, default_kernel_init
from mmjax.nn.mlp import get_activation
from mmjax.nn.norms import LayerNorm

_B1_SIZES = (64, 128, 320, 512)
# Variant -> (hidden_sizes, depths, mlp_ratios), as timm's pvt_v2_b0..b5 and HF's OpenGVLab/pvt_v2_b* configs.
# Backbone parameters (no head; transformers' PvtV2Model agrees): b0 3,409,760 (3.7M with the 1000-class head),
# b5 81,443,008 (82.0M with it).
VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {
    'b0': ((32, 64, 160, 256), (2, 2, 2, 2), (8, 8, 4, 4)),
    'b1': (_B1_SIZES, (2, 2, 2, 2), (8, 8, 4, 4)),
    'b2': (_B1_SIZES, (3, 4, 6, 3), (8, 8, 4, 4)),
    'b3': (_B1_SIZES, (3, 4, 18, 3), (8, 8, 4, 4)),
    'b4': (_B1_SIZES, (3, 8, 27, 3), (8, 8, 4, 4)),
    'b5': (_B1_SIZES, (3, 6, 40, 3), (4, 4, 4, 4)),
}
_HF_ACTIVATIONS = {'gelu': 'gelu', 'relu': 'relu', 'silu': 'silu', 'gelu_new': 'gelu_tanh'}
_PER_STAGE = ('depths', 'sr_ratios', 'hidden_sizes', 'patch_sizes', 'strides', 'num_attention_heads', 'mlp_ratios')


@dataclasses.dataclass(frozen=True)
class PvtV2Config:
  """The fields of HF `PvtV2Config` that shape the model (per-stage tuples of length num_encoder_blocks).

  layer_norm_eps: every LayerNorm in HF; the block and stage norms in timm / the original code.
  embed_layer_norm_eps: the patch-embedding and spatial-reduction norms (None: layer_norm_eps, as HF; timm and the
    original code leave these at torch's default 1e-5).
  """
  hidden_sizes: tuple[int, ...] = (32, 64, 160, 256)
  depths: tuple[int, ...] = (2, 2, 2, 2)
  sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
  patch_sizes: tuple[int, ...] = (7, 3, 3, 3)
  strides: tuple[int, ...] = (4, 2, 2, 2)
  num_attention_heads: tuple[int, ...] = (1, 2, 5, 8)
  mlp_ratios: tuple[int, ...] = (8, 8, 4, 4)
  num_channels: int = 3
  hidden_act: str = 'gelu'
  layer_norm_eps: float = 1e-6
  embed_layer_norm_eps: float | None = None
  qkv_bias: bool = True

  def __post_init__(self):
    for name in _PER_STAGE:
      object.__setattr__(self, name, tuple(getattr(self, name)))
    lengths = {name: len(getattr(self, name)) for name in _PER_STAGE}
    if len(set(lengths.values())) != 1:
      raise ValueError(f'PvtV2Config: per-stage fields must have one length each, got {lengths}.')
    if self.hidden_act not in _HF_ACTIVATIONS:
      raise ValueError(f'Unsupported PVTv2 hidden_act {self.hidden_act!r}; choose one of {sorted(_HF_ACTIVATIONS)}.')
    bad = [(e, h) for e, h in zip(self.hidden_sizes, self.num_attention_heads) if e % h]
    if bad:
      raise ValueError(f'PvtV2Config: hidden_sizes must be multiples of num_attention_heads, got (size, heads) {bad}.')

  @classmethod
  def variant(cls, name: str, *, timm: bool = False, **overrides: Any) -> PvtV2Config:
    """PVTv2-b0..b5; timm=True sets the 1e-5 embedding norms of timm and original whai362/PVT weights."""
    if name not in VARIANTS:
      raise ValueError(f'Unknown PVTv2 variant {name!r}; choose one of {sorted(VARIANTS)}.')
    sizes, depths, ratios = VARIANTS[name]
    fields = dict(hidden_sizes=sizes, depths=depths, mlp_ratios=ratios, embed_layer_norm_eps=1e-5 if timm else None)
    return cls(**{**fields, **overrides})

  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any]) -> PvtV2Config:
    """Reads an HF `pvt_v2` config.json dict (linear_attention, the b2_li variant, is not supported)."""
    if d.get('linear_attention'):
      raise ValueError('PVTv2 config.json has linear_attention=true (pvt_v2_b2_li), which mmjax does not implement.')
    fields = {f.name for f in dataclasses.fields(cls)} - {'embed_layer_norm_eps'}
    return cls(**{k: v for k, v in d.items() if k in fields})

  def to_hf_dict(self) -> dict[str, Any]:
    if self.embed_layer_norm_eps not in (None, self.layer_norm_eps):
      raise ValueError('An HF PVTv2 uses one LayerNorm eps; this config has embed_layer_norm_eps '
                       f'{self.embed_layer_norm_eps} != layer_norm_eps {self.layer_norm_eps}.')
    d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
         if k != 'embed_layer_norm_eps'}
    return {'model_type': 'pvt_v2', 'architectures': ['PvtV2Model'], 'num_encoder_blocks': len(self.depths), **d}

  @property
  def embed_eps(self) -> float:
    return self.layer_norm_eps if self.embed_layer_norm_eps is None else self.embed_layer_norm_eps


class DepthwiseConv(nn.Module):
  """torch Conv2d(C, C, k, padding=k // 2, groups=C) over channels last: [B, H, W, C] -> [B, H, W, C].

  kernel [k, k, 1, C] (a torch weight [C, 1, k, k] transposed by (2, 3, 1, 0)).
  """
  kernel_size: int = 3
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, channels = self.kernel_size, x.shape[-1]
    kernel = self.param('kernel', nn.with_logical_partitioning(default_kernel_init, ('conv_h', 'conv_w', None, 'mlp')),
                        (k, k, 1, channels), self.param_dtype)
    bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros_init(), ('mlp',)), (channels,),
                      self.param_dtype)
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((k // 2, k // 2),) * 2,
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=channels)
    return y + bias


class OverlapPatchEmbed(nn.Module):
  """Conv(k, stride s, padding k // 2) then LayerNorm: [B, H, W, C_in] -> [B, ceil(H / s), ceil(W / s), E]."""
  features: int
  patch_size: int
  stride: int
  eps: float
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = Conv2d(self.features, self.patch_size, self.stride, self.patch_size // 2, dtype=self.dtype,
               param_dtype=self.param_dtype, name='proj')(x)
    return LayerNorm(eps=self.eps, dtype=self.dtype, param_dtype=self.param_dtype, name='layer_norm')(x)


class SpatialReductionAttention(nn.Module):
  """Multi-head attention whose keys and values come from the map reduced by a stride-sr conv and a LayerNorm.

  x [B, H, W, E] -> [B, H, W, E]; the queries are all H * W positions, the keys (H / sr) * (W / sr) of them.
  """
  num_heads: int
  sr_ratio: int
  eps: float
  qkv_bias: bool = True
  attn_impl: str = 'auto'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, width = x.shape
    project = functools.partial(DenseGeneral, (self.num_heads, width // self.num_heads),
                                ('embed', 'heads', 'head_dim'), use_bias=self.qkv_bias, dtype=self.dtype,
                                param_dtype=self.param_dtype)
    q = project(name='query')(x.reshape(b, h * w, width))
    context = x
    if self.sr_ratio > 1:
      context = Conv2d(width, self.sr_ratio, self.sr_ratio, 0, dtype=self.dtype, param_dtype=self.param_dtype,
                       name='spatial_reduction')(x)
      context = LayerNorm(eps=self.eps, dtype=self.dtype, param_dtype=self.param_dtype, name='layer_norm')(context)
    context = einops.rearrange(context, 'b h w e -> b (h w) e')
    out = dot_product_attention(q, project(name='key')(context), project(name='value')(context), impl=self.attn_impl)
    out = DenseGeneral(width, ('heads', 'head_dim', 'embed'), axis=(-2, -1), dtype=self.dtype,
                       param_dtype=self.param_dtype, name='proj')(out)
    return out.reshape(b, h, w, width)


class ConvFeedForward(nn.Module):
  """dense1 -> depthwise 3x3 conv -> activation -> dense2: [B, H, W, E] -> [B, H, W, E]."""
  hidden_features: int
  activation: str = 'gelu'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = functools.partial(Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    h = dense(self.hidden_features, ('embed', 'mlp'), name='dense1')(x)
    h = DepthwiseConv(3, self.dtype, self.param_dtype, name='dwconv')(h)
    h = get_activation(self.activation)(h)
    return dense(x.shape[-1], ('mlp', 'embed'), name='dense2')(h)


class PvtV2Block(nn.Module):
  """Pre-LN block: x + attention(LN(x)), then + conv MLP(LN(x)); x [B, H, W, E] -> [B, H, W, E]."""
  config: PvtV2Config
  stage: int
  attn_impl: str = 'auto'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg, i = self.config, self.stage
    norm = functools.partial(LayerNorm, eps=cfg.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
    x = x + SpatialReductionAttention(cfg.num_attention_heads[i], cfg.sr_ratios[i], cfg.embed_eps, cfg.qkv_bias,
                                      self.attn_impl, self.dtype, self.param_dtype, name='attention')(
        norm(name='layer_norm_1')(x))
    mlp = ConvFeedForward(int(cfg.hidden_sizes[i] * cfg.mlp_ratios[i]), _HF_ACTIVATIONS[cfg.hidden_act], self.dtype,
                          self.param_dtype, name='mlp')
    return x + mlp(norm(name='layer_norm_2')(x))


class PvtV2Stage(nn.Module):
  """Overlapping patch embedding, the stage's blocks, a final LayerNorm: [B, H, W, C] -> [B, H / s, W / s, E]."""
  config: PvtV2Config
  stage: int
  attn_impl: str = 'auto'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg, i = self.config, self.stage
    x = OverlapPatchEmbed(cfg.hidden_sizes[i], cfg.patch_sizes[i], cfg.strides[i], cfg.embed_eps, self.dtype,
                          self.param_dtype, name='patch_embedding')(x)
    for j in range(cfg.depths[i]):
      x = PvtV2Block(cfg, i, self.attn_impl, self.dtype, self.param_dtype, name=f'blocks_{j}')(x)
    x = LayerNorm(eps=cfg.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name='layer_norm')(x)
    return nn.with_logical_constraint(x, ('batch', None, None, 'embed'))


class PvtV2Model(nn.Module):
  """pixel_values [B, H, W, C] (channels last, normalised) -> one feature map [B, H_i, W_i, hidden_sizes[i]] per
  stage (HF `PvtV2Backbone` feature_maps, or PvtV2Model's hidden_states, channels last)."""
  config: PvtV2Config
  attn_impl: str = 'auto'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, pixel_values: jax.Array) -> tuple[jax.Array, ...]:
    cfg = self.config
    if pixel_values.ndim != 4 or pixel_values.shape[-1] != cfg.num_channels:
      raise ValueError(f'pixel_values must be [B, H, W, {cfg.num_channels}] (channels last), got shape '
                       f'{pixel_values.shape}.')
    features, x = [], pixel_values
    for i in range(len(cfg.depths)):
      x = PvtV2Stage(cfg, i, self.attn_impl, self.dtype, self.param_dtype, name=f'layers_{i}')(x)
      features.append(x)
    return tuple(features)
