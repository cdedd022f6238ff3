"""Stable Diffusion's UNet as diffusers' `UNet2DConditionModel`: ResNet blocks with a timestep embedding, spatial
transformers (self-attention, cross-attention to text tokens, GEGLU feed-forward) in the cross-attention blocks, a
down path whose activations skip to the up path, and a mid block.

Channels last: `UNet2DConditionModel(config).apply({'params': p}, sample [B, H, W, C_in], timestep [B],
encoder_hidden_states [B, L, D])` -> [B, H, W, C_out] (H, W multiples of 2^(len(block_out_channels) - 1)).

Decoupled cross-attention (IP-Adapter): with extra_token_sets = n, every attn2 also owns to_k_ip_{j} / to_v_ip_{j}
(j < n, no bias) and, given extra_tokens = [(tokens_j [B, L_j, D], scale_j)], adds scale_j * attention(q,
to_k_ip_j(tokens_j), to_v_ip_j(tokens_j)) to the text attention before the shared output projection.

Parameter tree (diffusers' names with '_' for '.'):
  conv_in   time_embedding/{linear_1, linear_2}
  down_blocks_{i}/{resnets_{j}, attentions_{j}, downsamplers_0/conv}   mid_block/{resnets_0, attentions_0, resnets_1}
  up_blocks_{i}/{resnets_{j}, attentions_{j}, upsamplers_0/conv}       conv_norm_out   conv_out
  attentions_{j}/{norm, proj_in, transformer_blocks_{k}/{norm1, attn1, norm2, attn2, norm3, ff/{proj, out}}, proj_out}
  attn1, attn2: {q_proj, k_proj, v_proj, o_proj} (+ attn2/{to_k_ip_{j}, to_v_ip_{j}})
proj_in / proj_out are Dense layers in both of diffusers' variants (a 1x1 conv is the same map); only the key map
tells them apart.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from mmjax.models.diffusers_blocks import SPATIAL_AXES, Conv2d, Downsample2D, GroupNorm, ResnetBlock2D, Upsample2D
from mmjax.nn.attention import dot_product_attention
from mmjax.nn.embeddings import timestep_embedding
from mmjax.nn.linear import Dense, DenseGeneral
from mmjax.nn.multihead_attention import MultiHeadAttention
from mmjax.nn.norms import LayerNorm

DOWN_BLOCKS = ('CrossAttnDownBlock2D', 'DownBlock2D')
UP_BLOCKS = ('CrossAttnUpBlock2D', 'UpBlock2D')
MID_BLOCK = 'UNetMidBlock2DCrossAttn'
# (tokens [B, L_j, D], scale: a number, or an array [] or [B]) per extra cross-attention token set.
ExtraTokens = Sequence[tuple[jax.Array, ArrayLike]]

# diffusers config keys this port supports only at one value (the value of every SD1.x / SD2.x UNet).
_ONLY = {'only_cross_attention': (False,), 'dual_cross_attention': (False,), 'class_embed_type': (None,),
         'addition_embed_type': (None,), 'addition_time_embed_dim': (None,), 'num_class_embeds': (None,),
         'encoder_hid_dim': (None,), 'encoder_hid_dim_type': (None,), 'num_attention_heads': (None,),
         'reverse_transformer_layers_per_block': (None,), 'resnet_time_scale_shift': ('default',),
         'resnet_skip_time_act': (False,), 'time_embedding_type': ('positional',), 'time_embedding_act_fn': (None,),
         'timestep_post_act': (None,), 'time_cond_proj_dim': (None,), 'projection_class_embeddings_input_dim': (None,),
         'attention_type': ('default',), 'class_embeddings_concat': (False,),
         'mid_block_only_cross_attention': (None, False), 'cross_attention_norm': (None,), 'dropout': (0.0,),
         'act_fn': ('silu', 'swish'), 'mid_block_type': (MID_BLOCK,)}
# Transformer2DModel inside the blocks: its GroupNorm eps and its LayerNorms' eps (diffusers' defaults there).
_TRANSFORMER_GROUP_NORM_EPS = 1e-6
_TRANSFORMER_LAYER_NORM_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class UNet2DConditionConfig:
  """The fields of diffusers' UNet2DConditionModel config that this port reads (same names and defaults).

  attention_head_dim: as in diffusers, the number of attention heads (per down block when a tuple); a block of C
    channels has heads of C // heads channels.
  transformer_layers_per_block: transformer blocks per spatial transformer, per down block when a tuple (the up
    blocks take it reversed).
  upcast_attention: kept for the round trip; attention logits and softmax are float32 here whatever the dtype.
  """
  sample_size: int | tuple[int, int] | None = None
  in_channels: int = 4
  out_channels: int = 4
  center_input_sample: bool = False
  flip_sin_to_cos: bool = True
  freq_shift: float = 0
  down_block_types: tuple[str, ...] = ('CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D',
                                       'DownBlock2D')
  up_block_types: tuple[str, ...] = ('UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D')
  block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
  layers_per_block: int = 2
  downsample_padding: int = 1
  mid_block_scale_factor: float = 1.0
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  cross_attention_dim: int = 1280
  transformer_layers_per_block: int | tuple[int, ...] = 1
  attention_head_dim: int | tuple[int, ...] = 8
  use_linear_projection: bool = False
  upcast_attention: bool = False
  resnet_out_scale_factor: float = 1.0
  time_embedding_dim: int | None = None
  conv_in_kernel: int = 3
  conv_out_kernel: int = 3

  def __post_init__(self):
    n = len(self.block_out_channels)
    if len(self.down_block_types) != n or len(self.up_block_types) != n:
      raise ValueError(f'UNet2DConditionModel needs one down and one up block per block_out_channels entry ({n}), '
                       f'got {len(self.down_block_types)} down and {len(self.up_block_types)} up.')
    for key, allowed in (('down_block_types', DOWN_BLOCKS), ('up_block_types', UP_BLOCKS)):
      for name in getattr(self, key):
        if name not in allowed:
          raise ValueError(f'UNet2DConditionModel {key} entry {name!r} is not supported (only {list(allowed)}).')
    for key in ('attention_head_dim', 'transformer_layers_per_block'):
      value = getattr(self, key)
      if not isinstance(value, int) and (len(value) != n or not all(isinstance(v, int) for v in value)):
        raise ValueError(f'UNet2DConditionModel {key}={value!r} must be an int or {n} ints (one per block).')
    for key in ('layers_per_block', 'cross_attention_dim'):
      if not isinstance(getattr(self, key), int):
        raise ValueError(f'UNet2DConditionModel {key}={getattr(self, key)!r} is not supported (only one int for '
                         'every block).')

  def heads(self, block: int) -> int:
    """Attention heads of down block `block` (up block n - 1 - block has the same)."""
    value = self.attention_head_dim
    return value if isinstance(value, int) else value[block]

  def transformer_layers(self, block: int) -> int:
    """Transformer blocks per spatial transformer of down block `block` (up block n - 1 - block has the same)."""
    value = self.transformer_layers_per_block
    return value if isinstance(value, int) else value[block]

  @property
  def time_embed_dim(self) -> int:
    return self.time_embedding_dim or 4 * self.block_out_channels[0]

  @property
  def downsampling_factor(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)

  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any]) -> UNet2DConditionConfig:
    """Reads a diffusers UNet2DConditionModel config.json; a key at a value this port does not support is an error
    naming it."""
    for key, allowed in _ONLY.items():
      if key in d and d[key] not in allowed:
        raise ValueError(f'UNet2DConditionModel {key}={d[key]!r} is not supported (only '
                         f'{" or ".join(map(repr, allowed))}).')
    fields = {}
    for field in dataclasses.fields(cls):
      if field.name in d:
        value = d[field.name]
        fields[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**fields)

  def to_hf_dict(self) -> dict[str, Any]:
    """A diffusers config.json dict (the keys this port reads, the others at their defaults)."""
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    return {'_class_name': 'UNet2DConditionModel', 'mid_block_type': MID_BLOCK, 'act_fn': 'silu',
            **{k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}}


class TimestepEmbedding(nn.Module):
  """diffusers TimestepEmbedding (SiLU): linear_2(silu(linear_1(t_freq))); t_freq [B, C0] -> [B, features]."""
  features: int
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, t_freq: jax.Array) -> jax.Array:
    dense = functools.partial(Dense, self.features, dtype=self.dtype, param_dtype=self.param_dtype)
    h = dense((None, 'mlp'), name='linear_1')(t_freq)
    return dense(('mlp', 'embed'), name='linear_2')(jax.nn.silu(h))


class CrossAttention(nn.Module):
  """diffusers Attention with IPAdapterAttnProcessor semantics: x [B, N, E] attends to context [B, L, D]; each of
  the `extra_token_sets` token sets adds scale * attention(q, to_k_ip_j(tokens), to_v_ip_j(tokens)) -> [B, N, E].

  Parameters as MultiHeadAttention (q_proj [E, H, Dh], k_proj / v_proj [D, H, Dh], o_proj [H, Dh, E]; no q/k/v
  bias) plus to_k_ip_{j} / to_v_ip_{j} [D, H, Dh], created at init whether or not tokens are given.
  """
  num_heads: int
  head_dim: int
  extra_token_sets: int = 0
  attn_impl: str = 'auto'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array, extra_tokens: ExtraTokens = ()) -> jax.Array:
    dense = functools.partial(DenseGeneral, (self.num_heads, self.head_dim), use_bias=False, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    q = dense(('embed', 'heads', 'head_dim'), name='q_proj')(x)
    kv_axes = ('embed', 'kv_heads', 'head_dim')
    attend = functools.partial(dot_product_attention, impl=self.attn_impl)
    out = attend(q, dense(kv_axes, name='k_proj')(context), dense(kv_axes, name='v_proj')(context))
    for j in range(self.extra_token_sets):
      to_k, to_v = dense(kv_axes, name=f'to_k_ip_{j}'), dense(kv_axes, name=f'to_v_ip_{j}')
      tokens, scale = extra_tokens[j] if extra_tokens else (context, 0)
      if isinstance(scale, int | float) and scale == 0:  # as diffusers: a zero scale skips the set
        if self.is_initializing():  # the parameters exist whether or not a call feeds them
          to_k(tokens)
          to_v(tokens)
        continue
      scale = jnp.asarray(scale, out.dtype)
      scale = scale.reshape(-1, 1, 1, 1) if scale.ndim == 1 else scale
      out = out + scale * attend(q, to_k(tokens), to_v(tokens))
    out = nn.with_logical_constraint(out, ('batch', 'length', 'heads', 'head_dim'))
    return DenseGeneral(x.shape[-1], ('heads', 'head_dim', 'embed'), axis=(-2, -1), dtype=self.dtype,
                        param_dtype=self.param_dtype, name='o_proj')(out)


class GEGLUFeedForward(nn.Module):
  """diffusers FeedForward with GEGLU: out(h * gelu(gate)) with [h, gate] = proj(x); x [B, N, E] -> [B, N, E],
  proj [E, 2 * 4E], out [4E, E]."""
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    dense = functools.partial(Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    h, gate = jnp.split(dense(8 * width, ('embed', 'mlp'), name='proj')(x), 2, axis=-1)
    h = nn.with_logical_constraint(h * jax.nn.gelu(gate, approximate=False), ('batch', 'length', 'mlp'))
    return dense(width, ('mlp', 'embed'), name='out')(h)


class BasicTransformerBlock(nn.Module):
  """diffusers BasicTransformerBlock (layer_norm): self-attention, cross-attention, GEGLU feed-forward, each
  pre-normed and residual; x [B, N, E] -> [B, N, E]."""
  num_heads: int
  head_dim: int
  extra_token_sets: int = 0
  attn_impl: str = 'auto'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array, extra_tokens: ExtraTokens = ()) -> jax.Array:
    norm = functools.partial(LayerNorm, eps=_TRANSFORMER_LAYER_NORM_EPS, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    axes = ('batch', 'length', 'embed')
    x = x + MultiHeadAttention(self.num_heads, self.head_dim, qkv_bias=False, attn_impl=self.attn_impl,
                               dtype=self.dtype, param_dtype=self.param_dtype, name='attn1')(norm(name='norm1')(x))
    x = nn.with_logical_constraint(x, axes)
    x = x + CrossAttention(self.num_heads, self.head_dim, self.extra_token_sets, self.attn_impl, self.dtype,
                           self.param_dtype, name='attn2')(norm(name='norm2')(x), context, extra_tokens)
    x = nn.with_logical_constraint(x, axes)
    x = x + GEGLUFeedForward(self.dtype, self.param_dtype, name='ff')(norm(name='norm3')(x))
    return nn.with_logical_constraint(x, axes)


class SpatialTransformer(nn.Module):
  """diffusers Transformer2DModel on continuous inputs: x [B, H, W, C] -> x + proj_out(blocks(proj_in(norm(x))))
  over the H * W positions, with heads of C // num_heads channels."""
  num_heads: int
  num_layers: int
  norm_num_groups: int
  extra_token_sets: int = 0
  attn_impl: str = 'auto'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array, extra_tokens: ExtraTokens = ()) -> jax.Array:
    batch, height, width, channels = x.shape
    head_dim = channels // self.num_heads
    dense = functools.partial(Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    h = GroupNorm(self.norm_num_groups, _TRANSFORMER_GROUP_NORM_EPS, self.dtype, self.param_dtype, name='norm')(x)
    h = dense(self.num_heads * head_dim, ('embed', 'mlp'), name='proj_in')(h.reshape(batch, height * width, channels))
    for k in range(self.num_layers):
      h = BasicTransformerBlock(self.num_heads, head_dim, self.extra_token_sets, self.attn_impl, self.dtype,
                                self.param_dtype, name=f'transformer_blocks_{k}')(h, context, extra_tokens)
    h = dense(channels, ('mlp', 'embed'), name='proj_out')(h)
    return nn.with_logical_constraint(x + h.reshape(x.shape), SPATIAL_AXES)


class UNetBlock(nn.Module):
  """One down, mid or up block: `num_layers` x (ResnetBlock2D [+ SpatialTransformer]), then a sampler.

  kind 'down' returns (x, the output after each layer and after the downsampler); 'up' pops one skip per layer
  (concatenated after x on channels); 'mid' runs resnets_0, then attentions_0 and resnets_1 per layer.
  """
  config: UNet2DConditionConfig
  kind: str
  out_channels: int
  num_layers: int
  heads: int | None  # None: no attention
  transformer_layers: int
  sampler: bool
  output_scale_factor: float = 1.0
  extra_token_sets: int = 0
  attn_impl: str = 'auto'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  def resnet(self, name: str) -> ResnetBlock2D:
    cfg = self.config
    return ResnetBlock2D(self.out_channels, cfg.norm_num_groups, eps=cfg.norm_eps,
                         output_scale_factor=self.output_scale_factor, dtype=self.dtype,
                         param_dtype=self.param_dtype, name=name)

  def attention(self, name: str) -> SpatialTransformer:
    return SpatialTransformer(self.heads, self.transformer_layers, self.config.norm_num_groups,
                              self.extra_token_sets, self.attn_impl, self.dtype, self.param_dtype, name=name)

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, context: jax.Array, extra_tokens: ExtraTokens = (),
               skips: Sequence[jax.Array] = ()) -> tuple[jax.Array, list[jax.Array]]:
    if self.kind == 'mid':
      x = self.resnet('resnets_0')(x, temb)
      for j in range(self.num_layers):
        x = self.attention(f'attentions_{j}')(x, context, extra_tokens)
        x = self.resnet(f'resnets_{j + 1}')(x, temb)
      return x, []
    skips, outputs = list(skips), []
    for j in range(self.num_layers):
      if self.kind == 'up':
        x = jnp.concatenate([x, skips.pop()], axis=-1)
      x = self.resnet(f'resnets_{j}')(x, temb)
      if self.heads is not None:
        x = self.attention(f'attentions_{j}')(x, context, extra_tokens)
      outputs.append(x)
    if self.sampler and self.kind == 'down':
      x = Downsample2D(self.out_channels, self.config.downsample_padding, self.dtype, self.param_dtype,
                       name='downsamplers_0')(x)
      outputs.append(x)
    elif self.sampler:
      x = Upsample2D(self.out_channels, self.dtype, self.param_dtype, name='upsamplers_0')(x)
    return x, outputs


class UNet2DConditionModel(nn.Module):
  """sample [B, H, W, in_channels] (channels last), timestep [B] (int or float), encoder_hidden_states [B, L,
  cross_attention_dim] -> [B, H, W, out_channels]; with return_features also {'mid': [B, H/f, W/f, C_last],
  'up_blocks_{i}': each up block's output (DIFT reads up_blocks_1)}.

  extra_token_sets: the number of decoupled cross-attention token sets (IP-Adapter) whose to_k_ip / to_v_ip every
    attn2 owns; extra_tokens (a sequence of that many (tokens [B, L_j, cross_attention_dim], scale)) feeds them,
    and without it (or at scale 0) the model is the plain UNet.
  """
  config: UNet2DConditionConfig
  extra_token_sets: int = 0
  attn_impl: str = 'auto'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, sample: jax.Array, timestep: jax.Array, encoder_hidden_states: jax.Array, *,
               extra_tokens: ExtraTokens | None = None, return_features: bool = False
               ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    cfg = self.config
    extra_tokens = self._check_inputs(sample, timestep, encoder_hidden_states, extra_tokens)
    if cfg.center_input_sample:
      sample = 2 * sample - 1.0
    t_freq = timestep_embedding(timestep, cfg.block_out_channels[0], flip_sin_to_cos=cfg.flip_sin_to_cos,
                                downscale_freq_shift=cfg.freq_shift).astype(self.dtype or jnp.float32)
    temb = TimestepEmbedding(cfg.time_embed_dim, self.dtype, self.param_dtype, name='time_embedding')(t_freq)
    conv = functools.partial(Conv2d, dtype=self.dtype, param_dtype=self.param_dtype)
    x = conv(cfg.block_out_channels[0], cfg.conv_in_kernel, name='conv_in')(sample)
    block = functools.partial(UNetBlock, cfg, extra_token_sets=self.extra_token_sets, attn_impl=self.attn_impl,
                              dtype=self.dtype, param_dtype=self.param_dtype)
    n = len(cfg.block_out_channels)
    skips = [x]
    for i, kind in enumerate(cfg.down_block_types):
      heads = cfg.heads(i) if kind.startswith('CrossAttn') else None
      x, outputs = block('down', cfg.block_out_channels[i], cfg.layers_per_block, heads, cfg.transformer_layers(i),
                         i < n - 1, cfg.resnet_out_scale_factor, name=f'down_blocks_{i}')(
                             x, temb, encoder_hidden_states, extra_tokens)
      skips += outputs
    x, _ = block('mid', cfg.block_out_channels[-1], 1, cfg.heads(n - 1), cfg.transformer_layers(n - 1), False,
                 cfg.mid_block_scale_factor, name='mid_block')(x, temb, encoder_hidden_states, extra_tokens)
    features = {'mid': x}
    for i, kind in enumerate(cfg.up_block_types):
      heads = cfg.heads(n - 1 - i) if kind.startswith('CrossAttn') else None
      layers = cfg.layers_per_block + 1
      x, _ = block('up', cfg.block_out_channels[n - 1 - i], layers, heads, cfg.transformer_layers(n - 1 - i),
                   i < n - 1, cfg.resnet_out_scale_factor, name=f'up_blocks_{i}')(
                       x, temb, encoder_hidden_states, extra_tokens, skips[len(skips) - layers:])
      skips = skips[:len(skips) - layers]
      features[f'up_blocks_{i}'] = x
    x = jax.nn.silu(GroupNorm(cfg.norm_num_groups, cfg.norm_eps, self.dtype, self.param_dtype,
                              name='conv_norm_out')(x))
    out = conv(cfg.out_channels, cfg.conv_out_kernel, name='conv_out')(x)
    return (out, features) if return_features else out

  def _check_inputs(self, sample: jax.Array, timestep: jax.Array, context: jax.Array,
                    extra_tokens: ExtraTokens | None) -> ExtraTokens:
    cfg = self.config
    f = cfg.downsampling_factor
    if sample.ndim != 4 or sample.shape[-1] != cfg.in_channels or sample.shape[1] % f or sample.shape[2] % f:
      raise ValueError(f'UNet sample must be [B, H, W, {cfg.in_channels}] with H and W multiples of {f}, got shape '
                       f'{sample.shape}.')
    batch = sample.shape[0]
    if timestep.shape != (batch,):
      raise ValueError(f'UNet timestep must be [{batch}], got shape {timestep.shape}.')
    if context.ndim != 3 or context.shape[0] != batch or context.shape[-1] != cfg.cross_attention_dim:
      raise ValueError(f'UNet encoder_hidden_states must be [{batch}, L, {cfg.cross_attention_dim}], got shape '
                       f'{context.shape}.')
    if not extra_tokens:
      return ()
    if len(extra_tokens) != self.extra_token_sets:
      raise ValueError(f'UNet extra_tokens has {len(extra_tokens)} token sets but the model has '
                       f'extra_token_sets={self.extra_token_sets}.')
    for j, (tokens, _) in enumerate(extra_tokens):
      if tokens.ndim != 3 or tokens.shape[0] != batch or tokens.shape[-1] != cfg.cross_attention_dim:
        raise ValueError(f'UNet extra_tokens[{j}] must be [{batch}, L, {cfg.cross_attention_dim}], got shape '
                         f'{tokens.shape}.')
    return extra_tokens
