"""AVESFormer (arXiv 2408.01708) and the AVSegFormer-style baseline, built from the same parts.

Both models see one frame and that second's audio embedding (per frame, no temporal modelling [R]):

  model = AVSModel(AVSConfig(), backbone=make_backbone('pvt_b2'))
  variables = model.init(rng, frames, audio)        # frames [B, H, W, 3] ImageNet-normalised, audio [B, 128]
  logits, aux = model.apply(variables, frames, audio)
  # logits [B, H, W, C] (C = 1: sigmoid, S4 / MS3; C = 71: softmax, AVSS); aux['mask_feature'] [B, H/4, W/4]

The audio embedding comes from the frozen VGGish (mmjax.models.vggish) outside this module, so the benchmark can time
the model with and without it. Tags as in the spec: [V] checked against the paper or official code, [R] reviewer or
third-party summary, [M] recollection, [A] our assumption; every [R]/[M]/[A] choice is a field of AVSConfig.

Decoder (AVSConfig.decoder):
  'avesformer': the Prompt Query Generator turns the audio into N tokens (N learnable prompts + the projected audio,
    then an MLP) that are the keys/values of every cross-attention; stages per scale (1/4, 1/8, 1/16, 1/32) from
    `stages`: 'elf' (the EarLy Focus block: depthwise k x k conv, LayerNorm, FFN, residual), 'attn' (visual
    self-attention, cross-attention to the audio tokens, FFN), or 'none' (the FPN fusion alone).
  'avsegformer': AVSegFormer's AttentionGenerator (num_queries learnable queries, query_layers post-norm layers of
    self-attention, cross-attention to the ONE audio token, FFN) whose output queries are the keys/values of dense
    attention stages. With one key the softmax is 1, so that cross-attention hands every query the same value vector:
    the attention dissipation PQG fixes (spec 2.3). AVSegFormer's deformable encoder/decoder and mixer are replaced
    by these dense stages [A], so the baseline shares the backbone, in_proj, FPN, blocks and mask head with AVESFormer.
Every cross-attention output is sown as intermediates '.../cross_attention' (the dissipation test reads them).
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from mmjax.models.diffusers_blocks import Conv2d, GroupNorm
from mmjax.models.pvt_v2 import ConvFeedForward, DepthwiseConv, PvtV2Config, PvtV2Model
from mmjax.models.resnet import ResNet, ResNetConfig
from mmjax.nn.linear import Dense
from mmjax.nn.multihead_attention import MultiHeadAttention
from mmjax.nn.norms import LayerNorm

DECODERS = ('avesformer', 'avsegformer')
STAGE_KINDS = ('elf', 'attn', 'none')
FFN_TYPES = ('mlp', 'dwconv_mlp')
BACKBONES = ('pvt_b0', 'pvt_b1', 'pvt_b2', 'pvt_b3', 'pvt_b4', 'pvt_b5', 'r50', 'tiny_pvt', 'tiny_r50')
# Tiny backbones for CPU tests and the smoke (spec section 9).
TINY_PVT = PvtV2Config(hidden_sizes=(16, 32, 64, 128), depths=(1, 1, 1, 1), num_attention_heads=(1, 2, 4, 8),
                       mlp_ratios=(2, 2, 2, 2))
TINY_RESNET = ResNetConfig(stem_width=8, widths=(4, 8, 16, 32), depths=(1, 1, 1, 1))


@dataclasses.dataclass(frozen=True)
class AVSConfig:
  """The decoder's knobs (defaults: the spec's section 2.5 default config)."""
  decoder: str = 'avesformer'
  num_classes: int = 1                      # 1 (sigmoid) for S4 / MS3, 71 (softmax) for AVSS [V AVSegFormer]
  dim: int = 256                            # D [V AVSegFormer in_proj]
  heads: int = 8                            # [V AVSegFormer]
  num_prompts: int = 16                     # PQG's N [A]; the paper ablates it [R]: sweep 8/16/32/71
  prompt_mlp: bool = True                   # PQG: a residual MLP over P + a [A]
  stages: tuple[str, ...] = ('elf', 'elf', 'attn', 'attn')  # per scale 1/4..1/32: ELF early, attention late [R]
  blocks_per_stage: int = 1                 # [A]
  dw_kernel: int = 7                        # ELF depthwise kernel [A]
  ffn_ratio: int = 4                        # [A]
  ffn_type: str = 'mlp'                     # 'mlp' | 'dwconv_mlp' (the "efficient FFN" is unverified) [A]
  gn_groups: int = 32                       # in_proj GroupNorm [V AVSegFormer]
  mask_dims: tuple[int, int] = (128, 32)    # mask head widths [V AVSegFormer]
  audio_dim: int = 128                      # VGGish embedding [V]
  num_queries: int = 300                    # baseline AttentionGenerator queries [V AVSegFormer]
  query_layers: int = 6                     # [V AVSegFormer]
  query_ffn: int = 1024                     # [V AVSegFormer]

  def __post_init__(self):
    object.__setattr__(self, 'stages', tuple(self.stages))
    object.__setattr__(self, 'mask_dims', tuple(self.mask_dims))
    if self.decoder not in DECODERS:
      raise ValueError(f'AVSConfig.decoder must be one of {DECODERS}, got {self.decoder!r}')
    if len(self.stages) != 4 or not set(self.stages) <= set(STAGE_KINDS):
      raise ValueError(f'AVSConfig.stages must be 4 entries (1/4 .. 1/32) from {STAGE_KINDS}, got {self.stages}')
    if self.ffn_type not in FFN_TYPES:
      raise ValueError(f'AVSConfig.ffn_type must be one of {FFN_TYPES}, got {self.ffn_type!r}')
    if self.dim % self.heads or self.dim % self.gn_groups:
      raise ValueError(f'AVSConfig.dim {self.dim} must be a multiple of heads {self.heads} and gn_groups '
                       f'{self.gn_groups}')


def make_backbone(name: str) -> nn.Module:
  """The visual backbone `name` (BACKBONES): it maps [B, H, W, 3] to 4 maps at strides 4/8/16/32."""
  if name.startswith('pvt_b') and name in BACKBONES:
    return PvtV2Model(PvtV2Config.variant(name[4:]))
  if name == 'tiny_pvt':
    return PvtV2Model(TINY_PVT)
  if name == 'r50':
    return ResNet(ResNetConfig())
  if name == 'tiny_r50':
    return ResNet(TINY_RESNET)
  raise ValueError(f'unknown backbone {name!r}; choose one of {BACKBONES}')


def _gelu(x: jax.Array) -> jax.Array:
  return jax.nn.gelu(x, approximate=False)


class Mlp(nn.Module):
  """Dense(hidden) -> exact GELU -> Dense(E): [..., E] -> [..., E]."""
  hidden: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = _gelu(Dense(self.hidden, ('embed', 'mlp'), name='fc1')(x))
    return Dense(x.shape[-1], ('mlp', 'embed'), name='fc2')(h)


class FeedForward(nn.Module):
  """The FFN knob over a map [B, H, W, E]: 'mlp' (pointwise) or 'dwconv_mlp' (PVTv2's, a depthwise 3x3 inside)."""
  hidden: int
  ffn_type: str

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.ffn_type == 'mlp':
      return Mlp(self.hidden, name='mlp')(x)
    return ConvFeedForward(self.hidden, 'gelu', name='dwconv_mlp')(x)


class CrossAttention(nn.Module):
  """Queries [B, S, E] attend to tokens [B, N, E] (the keys and values) -> [B, S, E]; sows the output."""
  heads: int

  @nn.compact
  def __call__(self, queries: jax.Array, tokens: jax.Array) -> jax.Array:
    out = MultiHeadAttention(self.heads, attn_impl='xla', name='attention')(queries, tokens)
    self.sow('intermediates', 'cross_attention', out)
    return out


class PromptQueryGenerator(nn.Module):
  """PQG [R + A, spec 2.4]: audio [B, 128] -> N audio-conditioned tokens [B, N, D] = P + Linear(audio)
  (+ a residual MLP)."""
  config: AVSConfig

  @nn.compact
  def __call__(self, audio: jax.Array) -> jax.Array:
    cfg = self.config
    prompts = self.param('prompts', nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, 'embed')),
                         (cfg.num_prompts, cfg.dim))
    tokens = prompts[None] + Dense(cfg.dim, ('mlp', 'embed'), name='audio_proj')(audio)[:, None]
    if cfg.prompt_mlp:
      tokens = tokens + Mlp(cfg.dim * cfg.ffn_ratio, name='mlp')(LayerNorm(name='norm')(tokens))
    return tokens


class QueryGenerator(nn.Module):
  """AVSegFormer's AttentionGenerator [V spec 2.3]: audio [B, 128] -> Linear to ONE token, then num_queries learnable
  queries through query_layers post-norm layers (self-attention, cross-attention to the token, GELU FFN) ->
  [B, Q, D]."""
  config: AVSConfig

  @nn.compact
  def __call__(self, audio: jax.Array) -> jax.Array:
    cfg = self.config
    token = Dense(cfg.dim, ('mlp', 'embed'), name='audio_proj')(audio)[:, None]          # [B, 1, D]
    queries = self.param('queries', nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, 'embed')),
                         (cfg.num_queries, cfg.dim))
    q = jnp.broadcast_to(queries[None], (audio.shape[0],) + queries.shape)
    norm = functools.partial(LayerNorm, eps=1e-5)
    for i in range(cfg.query_layers):
      q = norm(name=f'norm1_{i}')(q + MultiHeadAttention(cfg.heads, attn_impl='xla', name=f'self_attn_{i}')(q))
      q = norm(name=f'norm2_{i}')(q + CrossAttention(cfg.heads, name=f'cross_attn_{i}')(q, token))
      q = norm(name=f'norm3_{i}')(q + Mlp(cfg.query_ffn, name=f'ffn_{i}')(q))
    return q


class AttentionBlock(nn.Module):
  """Pre-norm [A]: x + SelfAttn(LN x), + CrossAttn(LN x, tokens), + FFN(LN x); x [B, H, W, D] -> [B, H, W, D]."""
  config: AVSConfig

  @nn.compact
  def __call__(self, x: jax.Array, tokens: jax.Array) -> jax.Array:
    cfg = self.config
    b, h, w, d = x.shape
    seq = x.reshape(b, h * w, d)
    seq = seq + MultiHeadAttention(cfg.heads, attn_impl='xla', name='self_attn')(LayerNorm(name='norm1')(seq))
    seq = seq + CrossAttention(cfg.heads, name='cross_attn')(LayerNorm(name='norm2')(seq), tokens)
    x = seq.reshape(b, h, w, d)
    return x + FeedForward(d * cfg.ffn_ratio, cfg.ffn_type, name='ffn')(LayerNorm(name='norm3')(x))


class ElfBlock(nn.Module):
  """EarLy Focus block [R spec 2.5, layout A]: x + FFN(LN(DWConv_k(x))); x [B, H, W, D] -> [B, H, W, D]."""
  config: AVSConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    h = DepthwiseConv(cfg.dw_kernel, name='dwconv')(x)
    return x + FeedForward(x.shape[-1] * cfg.ffn_ratio, cfg.ffn_type, name='ffn')(LayerNorm(name='norm')(h))


def _resize(x: jax.Array, height: int, width: int) -> jax.Array:
  """Bilinear [B, h, w, C] -> [B, height, width, C] (half-pixel centres, no antialiasing: F.interpolate's)."""
  return jax.image.resize(x, (x.shape[0], height, width, x.shape[-1]), 'bilinear', antialias=False)


class MaskHead(nn.Module):
  """[V AVSegFormer]: 3x3 conv D -> 128, bilinear to the input size, 3x3 conv 128 -> 32, ReLU, 1x1 conv to C:
  [B, H/4, W/4, D] -> logits [B, H, W, C]."""
  config: AVSConfig

  @nn.compact
  def __call__(self, x: jax.Array, height: int, width: int) -> jax.Array:
    first, second = self.config.mask_dims
    x = _resize(Conv2d(first, 3, name='conv1')(x), height, width)
    x = nn.relu(Conv2d(second, 3, name='conv2')(x))
    return Conv2d(self.config.num_classes, 1, name='out')(x)


class Decoder(nn.Module):
  """Backbone maps (strides 4..32) + audio [B, 128] -> (logits [B, H, W, C], mask feature [B, H/4, W/4, D])."""
  config: AVSConfig

  @nn.compact
  def __call__(self, features: tuple[jax.Array, ...], audio: jax.Array, height: int, width: int
               ) -> tuple[jax.Array, jax.Array]:
    cfg = self.config
    if cfg.decoder == 'avesformer':
      tokens = PromptQueryGenerator(cfg, name='pqg')(audio)
    else:
      tokens = QueryGenerator(cfg, name='query_generator')(audio)
    x = None
    for i in reversed(range(len(features))):  # 1/32 first: the FPN's top-down path [V AVSegFormer SimpleFPN]
      lateral = GroupNorm(cfg.gn_groups, name=f'in_norm_{i}')(Conv2d(cfg.dim, 1, name=f'in_proj_{i}')(features[i]))
      if x is not None:
        _, h, w, _ = lateral.shape
        lateral = lateral + Conv2d(cfg.dim, 3, name=f'fpn_{i}')(_resize(x, h, w))
      x = lateral
      for j in range(cfg.blocks_per_stage if cfg.stages[i] != 'none' else 0):
        if cfg.stages[i] == 'elf':
          x = ElfBlock(cfg, name=f'stage{i}_{j}')(x)
        else:
          x = AttentionBlock(cfg, name=f'stage{i}_{j}')(x, tokens)
    return MaskHead(cfg, name='mask_head')(x, height, width), x


class AVSModel(nn.Module):
  """frames [B, H, W, 3] (ImageNet-normalised) + audio embeddings [B, 128] -> (logits [B, H, W, C],
  {'mask_feature': [B, H/4, W/4] channel mean of the finest decoder map, for AVSegFormer's mix loss}).

  A ResNet backbone runs with frozen BatchNorm statistics (variables['batch_stats']) [A: detectron2's FrozenBN, as
  COMBO]."""
  config: AVSConfig
  backbone: nn.Module

  @nn.compact
  def __call__(self, frames: jax.Array, audio: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    if audio.shape != (frames.shape[0], self.config.audio_dim):
      raise ValueError(f'audio must be [B, {self.config.audio_dim}] for frames [B, H, W, 3], got {audio.shape} '
                       f'and {frames.shape}')
    features = self.backbone(frames)
    logits, feature = Decoder(self.config, name='decoder')(features, audio, frames.shape[1], frames.shape[2])
    return logits, {'mask_feature': jnp.mean(feature, axis=-1)}


def host_random_like(shapes, seed: int = 0) -> dict:
  """Unboxed arrays shaped as `shapes` (a nested dict of ShapeDtypeStructs, boxed or not, e.g. jax.eval_shape of an
  init), drawn on the host from numpy's generator `seed`, by leaf name: 'kernel' N(0, 1 / fan_in) (LeCun's scale;
  fan_in = the product of all but the last axis, except the [E, heads, head_dim] attention projections in: E), 'bias'
  and 'mean' 0, 'scale' and 'var' 1, other leaves (learned prompts and queries) N(0, 0.02^2) when they have 2 or
  more axes, else 0.

  For programs that need generic random weights (the FPS benchmark, the shape and attention-dissipation tests, the CPU
  smoke): XLA compiles each of a model's random initialisers on its own, which on CPU costs far more than running a
  tiny model (about 0.5 s per parameter tensor); this compiles nothing."""
  rng = np.random.default_rng(seed)
  values = {}
  for path, leaf in flatten_dict(shapes).items():
    leaf = leaf.value if isinstance(leaf, nn.meta.AxisMetadata) else leaf
    name, shape = path[-1], leaf.shape
    if name == 'kernel':
      fan_in = shape[0] if len(shape) == 3 and path[-2] not in ('o_proj', 'proj') else int(np.prod(shape[:-1]))
      value = rng.standard_normal(shape) / np.sqrt(fan_in)
    elif name in ('scale', 'var'):
      value = np.ones(shape)
    elif name not in ('bias', 'mean') and len(shape) >= 2:
      value = 0.02 * rng.standard_normal(shape)
    else:
      value = np.zeros(shape)
    values[path] = value.astype(leaf.dtype)
  return jax.tree.map(jnp.asarray, unflatten_dict(values))


def host_random_variables(init_fn, *args, seed: int = 0) -> dict:
  """`host_random_like` of the variables `init_fn(*args)` makes (jax.eval_shape: traced, never compiled)."""
  return host_random_like(jax.eval_shape(init_fn, *args), seed)
