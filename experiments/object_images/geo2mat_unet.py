"""The geo2mat stage's denoiser: imagen-pytorch 1.26's `Unet` (the official code's stage 2 is this U-Net, not a
DiT), channels last, as the Object Images repo configures it (pl_imagen_model.py, geo2mat_imagen.yaml).

`Geo2MatUNet(config).apply({'params': p}, x [B, H, W, channels], log_snr [B], cond_images [B, H, W,
cond_images_channels], labels [B], cond_drop_mask [B] bool)` -> the v prediction [B, H, W, channels].

- Input: the condition (the 4 geometry channels) concatenated before the noisy materials; a cross-embed init conv
  (3x3, 7x7, 15x15 convs of 1/2, 1/4, 1/4 of `dim` channels).
- Time: imagen's continuous time is the log-SNR; learned Fourier features -> time hiddens -> the resnets'
  scale/shift (t) and `num_time_tokens` attention tokens.
- Class: the label's row of a [num_classes, text_embed_dim] table is the one "text" token (the official code's
  `label_embedder`; its optimiser holds only the U-Net, so the table stays at its N(0, 1) init unless
  `train_label_embed`). The token, padded to `max_text_len` with null embeddings, goes through a 2-layer Perceiver
  resampler; its mean adds to t. A dropped condition (cond_drop_mask, or a label >= num_classes such as the null
  label 63) takes the learned null embeddings and null hidden instead (imagen's cond_drop_prob); the geometry is
  never dropped.
- Body: per level a cross-attention resnet block, `num_resnet_blocks` resnet blocks with global-context gating, and
  a transformer block (self-attention with one shared K/V head, attending also to the conditioning tokens) where
  `layer_attns`; pixel-unshuffle downsampling, a mid block (cross-attention resnet, self-attention, cross-attention
  resnet), skip connections scaled by 2^-1/2, pixel-shuffle upsampling, the init conv's output concatenated before
  the final resnet block, and a zero-initialised 3x3 output conv.
- Attention is imagen's cosine-sim attention: q and k l2-normalised, times learned per-dim scales, logits x8, a
  learned null key/value prepended (see `_cosine_attention`).

Parameters keep imagen's module names (to_q, to_kv, null_kv, q_scale, time_mlp, block1/project, gca, res_conv,
...), so a key map from a torch state dict reads like a dictionary; downs_{i}_* and ups_{i}_* are indexed by
resolution level i (torch's ups.{levels - 1 - i}). torch's default init is reproduced for weights (biases start at
zero). Computation is float32 throughout (the official run is '32-true').
"""
from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmjax.models.diffusers_blocks import SPATIAL_AXES, Conv2d, GroupNorm
from mmjax.nn.attention import dot_product_attention
from mmjax.nn.linear import Dense, DenseGeneral
from mmjax.nn.norms import LayerNorm

# torch's default Linear / Conv2d weight init, U(±1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')
_randn = nn.initializers.normal(1.0)
# imagen's LayerNorm (gain only, eps 1e-5 in float32) and torch's nn.LayerNorm (gain and bias, eps 1e-5).
_imagen_norm = functools.partial(LayerNorm, eps=1e-5, use_bias=False)
_torch_norm = functools.partial(LayerNorm, eps=1e-5)
_dense = functools.partial(Dense, kernel_init=torch_default_init)
_dense_general = functools.partial(DenseGeneral, kernel_init=torch_default_init)
_conv = functools.partial(Conv2d, kernel_init=torch_default_init)
# imagen's fixed attention logit scale (cosine-sim attention: |q·k| <= 1 before the learned scales).
ATTENTION_SCALE = 8.0
# imagen's PerceiverResampler as the U-Net builds it: depth 2, 4 latents from the mean-pooled sequence, FF x4.
PERCEIVER_DEPTH = 2
PERCEIVER_MEAN_POOLED_LATENTS = 4
PERCEIVER_FF_MULT = 4
# imagen's mid block: CrossAttention's default heads in both resnets, TransformerBlock's default ff_mult.
MID_HEADS, MID_DIM_HEAD, MID_FF_MULT = 8, 64, 2.0
_TOKEN_AXES = ('batch', 'length', 'embed')


@dataclasses.dataclass(frozen=True)
class Geo2MatConfig:
  """imagen-pytorch 1.26 `Unet` arguments, at the Object Images geo2mat values (pl_imagen_model.py with
  omage_channels=5, cond_omage_channels=4, dim=256) and imagen's defaults for the rest.

  channels: the denoised channels (albedo 3, metalness, roughness; normals are dropped, mode 'nonormal').
  text_embed_dim: the class token's width (the official `label_embed_dim`, 768); cond_dim (None: dim) is the
    width of the conditioning tokens inside the U-Net.
  num_classes: rows of the label table (ABO's 63); a label >= num_classes (the null label) means "dropped".
  train_label_embed: False reproduces the official optimiser, which leaves the label table at its init.
  """
  channels: int = 5
  cond_images_channels: int = 4
  dim: int = 256
  dim_mults: tuple[int, ...] = (1, 2, 3, 4)
  num_resnet_blocks: int = 3
  layer_attns: tuple[bool, ...] = (False, True, True, True)
  layer_cross_attns: tuple[bool, ...] = (False, True, True, True)
  attn_heads: int = 8
  attn_dim_head: int = 64
  ff_mult: float = 2.0
  text_embed_dim: int = 768
  cond_dim: int | None = None
  num_classes: int = 63
  num_time_tokens: int = 2
  learned_sinu_pos_emb_dim: int = 16
  max_text_len: int = 256
  resnet_groups: int = 8
  init_cross_embed_kernel_sizes: tuple[int, ...] = (3, 7, 15)
  attn_pool_num_latents: int = 32
  attn_pool_max_seq_len: int = 512
  init_conv_to_final_conv_residual: bool = True
  train_label_embed: bool = False

  def __post_init__(self):
    n = len(self.dim_mults)
    for key in ('layer_attns', 'layer_cross_attns'):
      if len(getattr(self, key)) != n:
        raise ValueError(f'Geo2MatConfig.{key} needs one entry per dim_mults level ({n}), got {getattr(self, key)}.')
    if self.learned_sinu_pos_emb_dim % 2:
      raise ValueError(f'Geo2MatConfig.learned_sinu_pos_emb_dim must be even, got {self.learned_sinu_pos_emb_dim}.')
    if self.max_text_len > self.attn_pool_max_seq_len:
      raise ValueError(f'Geo2MatConfig.max_text_len ({self.max_text_len}) exceeds attn_pool_max_seq_len '
                       f'({self.attn_pool_max_seq_len}).')

  @property
  def token_dim(self) -> int:
    return self.cond_dim or self.dim

  @property
  def time_cond_dim(self) -> int:
    return 4 * self.dim

  @property
  def downsampling_factor(self) -> int:
    return 2 ** (len(self.dim_mults) - 1)


def _l2norm(x: jax.Array) -> jax.Array:
  """torch F.normalize over the last axis: x / max(|x|, 1e-12)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _cosine_attention(module: nn.Module, q: jax.Array, k: jax.Array, v: jax.Array, *, null_kv: bool,
                      attn_impl: str) -> jax.Array:
  """imagen's attention core: q [B, N, H, D], k/v [B, L, Hkv, D] -> [B, N, H, D].

  Creates q_scale, k_scale [D] (and null_kv [2, D] when `null_kv`: one key/value every head sees, prepended) on
  `module`; logits are 8 * (q_scale * q/|q|) . (k_scale * k/|k|).
  """
  dh, kv_heads = q.shape[-1], k.shape[2]
  if null_kv:
    null = module.param('null_kv', nn.with_logical_partitioning(_randn, (None, 'head_dim')), (2, dh), jnp.float32)
    null = jnp.broadcast_to(null[:, None, None, None, :].astype(k.dtype), (2, k.shape[0], 1, kv_heads, dh))
    k, v = jnp.concatenate([null[0], k], axis=1), jnp.concatenate([null[1], v], axis=1)
  ones = nn.with_logical_partitioning(nn.initializers.ones_init(), ('head_dim',))
  q = _l2norm(q) * module.param('q_scale', ones, (dh,), jnp.float32)
  k = _l2norm(k) * module.param('k_scale', ones, (dh,), jnp.float32)
  q = nn.with_logical_constraint(q, ('batch', 'length', 'heads', 'head_dim'))
  return dot_product_attention(q.astype(v.dtype), k.astype(v.dtype), v, scale=ATTENTION_SCALE, impl=attn_impl)


class CrossAttention(nn.Module):
  """imagen CrossAttention (in resnet blocks): x [B, N, C] attends to context [B, L, cond_dim] -> [B, N, C].

  to_q [C, H, D], to_kv [cond_dim, 2, H, D] (torch's chunk(2) of one Linear), to_out [H, D, C] + a gain-only norm.
  """
  heads: int
  dim_head: int
  attn_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    h = _imagen_norm(name='norm')(x)
    q = _dense_general((self.heads, self.dim_head), ('embed', 'heads', 'head_dim'), use_bias=False, name='to_q')(h)
    kv = _dense_general((2, self.heads, self.dim_head), ('embed', None, 'kv_heads', 'head_dim'), use_bias=False,
                        name='to_kv')(context)
    out = _cosine_attention(self, q, kv[:, :, 0], kv[:, :, 1], null_kv=True, attn_impl=self.attn_impl)
    out = _dense_general(x.shape[-1], ('heads', 'head_dim', 'embed'), axis=(-2, -1), use_bias=False,
                         name='to_out')(out)
    return _imagen_norm(name='to_out_norm')(out)


class SelfAttention(nn.Module):
  """imagen Attention (in transformer blocks): multi-query self-attention, x [B, N, C] -> [B, N, C].

  Queries have `heads` heads; keys and values one shared head from to_kv [C, 2, D]. With context [B, L, cond_dim]
  (to_context: torch LayerNorm then Linear [cond_dim, 2, D] with bias) its keys/values join the sequence.
  """
  heads: int
  dim_head: int
  attn_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
    h = _imagen_norm(name='norm')(x)
    q = _dense_general((self.heads, self.dim_head), ('embed', 'heads', 'head_dim'), use_bias=False, name='to_q')(h)
    kv = _dense_general((2, self.dim_head), ('embed', None, 'head_dim'), use_bias=False, name='to_kv')(h)
    k, v = kv[:, :, 0, None], kv[:, :, 1, None]
    if context is not None:
      c = _torch_norm(name='to_context_norm')(context)
      ckv = _dense_general((2, self.dim_head), ('embed', None, 'head_dim'), name='to_context')(c)
      k = jnp.concatenate([ckv[:, :, 0, None], k], axis=1)
      v = jnp.concatenate([ckv[:, :, 1, None], v], axis=1)
    out = _cosine_attention(self, q, k, v, null_kv=True, attn_impl=self.attn_impl)
    out = _dense_general(x.shape[-1], ('heads', 'head_dim', 'embed'), axis=(-2, -1), use_bias=False,
                         name='to_out')(out)
    return _imagen_norm(name='to_out_norm')(out)


class FeedForward(nn.Module):
  """imagen FeedForward: norm, Linear (no bias), exact GELU, norm, Linear (no bias); [.., C] -> [.., C]."""
  mult: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = int(x.shape[-1] * self.mult)
    h = _dense(hidden, ('embed', 'mlp'), use_bias=False, name='fc1')(_imagen_norm(name='norm')(x))
    h = _imagen_norm(feature_axis='mlp', name='norm_hidden')(jax.nn.gelu(h, approximate=False))
    return _dense(x.shape[-1], ('mlp', 'embed'), use_bias=False, name='fc2')(h)


class TransformerBlock(nn.Module):
  """imagen TransformerBlock (depth 1): x [B, H, W, C] -> x + attn(x, context), then + ff."""
  heads: int
  dim_head: int
  ff_mult: float
  attn_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
    b, hgt, wid, c = x.shape
    h = x.reshape(b, hgt * wid, c)
    h = h + SelfAttention(self.heads, self.dim_head, self.attn_impl, name='attn')(h, context)
    h = h + FeedForward(self.ff_mult, name='ff')(h)
    return nn.with_logical_constraint(h.reshape(x.shape), SPATIAL_AXES)


class Block(nn.Module):
  """imagen Block: GroupNorm, optional x * (scale + 1) + shift, SiLU, 3x3 conv; [B, H, W, C] -> [.., dim_out]."""
  dim_out: int
  groups: int

  @nn.compact
  def __call__(self, x: jax.Array, scale_shift: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    x = GroupNorm(self.groups, 1e-5, name='groupnorm')(x)
    if scale_shift is not None:
      scale, shift = scale_shift
      x = x * (scale + 1) + shift
    return _conv(self.dim_out, 3, name='project')(jax.nn.silu(x))


class GlobalContext(nn.Module):
  """imagen GlobalContext: an attention-pooled channel gate; x [B, H, W, C] -> sigmoid gate [B, 1, 1, C]."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, c = x.shape[0], x.shape[-1]
    flat = x.reshape(b, -1, c)
    weights = jax.nn.softmax(_dense(1, ('embed', None), name='to_k')(flat)[..., 0], axis=-1)
    pooled = jnp.einsum('bn,bnc->bc', weights, flat)
    h = jax.nn.silu(_dense(max(3, c // 2), ('embed', 'mlp'), name='net_0')(pooled))
    return jax.nn.sigmoid(_dense(c, ('mlp', 'embed'), name='net_2')(h))[:, None, None, :]


class ResnetBlock(nn.Module):
  """imagen ResnetBlock: x [B, H, W, C_in], t [B, time_cond_dim] (, context [B, L, cond_dim]) -> [.., dim_out].

  h = block1(x); h += cross_attn(h, context) when `cross_attn`; h = block2(h) with (scale, shift) =
  time_mlp(silu(t)); h *= gca(h) when `use_gca`; out = h + res_conv(x) (1x1 conv when C_in != dim_out).
  """
  dim_out: int
  groups: int
  cross_attn: bool = False
  use_gca: bool = False
  heads: int = 8
  dim_head: int = 64
  attn_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, context: jax.Array | None = None) -> jax.Array:
    x = nn.with_logical_constraint(x, SPATIAL_AXES)
    scale_shift = _dense(2 * self.dim_out, ('mlp', 'embed'), name='time_mlp')(jax.nn.silu(t))[:, None, None, :]
    h = Block(self.dim_out, self.groups, name='block1')(x)
    if self.cross_attn:
      b, hgt, wid, c = h.shape
      attended = CrossAttention(self.heads, self.dim_head, self.attn_impl, name='cross_attn')(
          h.reshape(b, hgt * wid, c), context)
      h = h + attended.reshape(h.shape)
    h = Block(self.dim_out, self.groups, name='block2')(h, tuple(jnp.split(scale_shift, 2, axis=-1)))
    if self.use_gca:
      h = h * GlobalContext(name='gca')(h)
    res = _conv(self.dim_out, 1, name='res_conv')(x) if x.shape[-1] != self.dim_out else x
    return nn.with_logical_constraint(h + res, SPATIAL_AXES)


class PerceiverAttention(nn.Module):
  """imagen PerceiverAttention: latents [B, M, D] attend to [x; latents] ([B, N + M, D]) -> [B, M, D]."""
  heads: int
  dim_head: int
  attn_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array, latents: jax.Array) -> jax.Array:
    x = _torch_norm(name='norm')(x)
    latents = _torch_norm(name='norm_latents')(latents)
    q = _dense_general((self.heads, self.dim_head), ('embed', 'heads', 'head_dim'), use_bias=False,
                       name='to_q')(latents)
    kv = _dense_general((2, self.heads, self.dim_head), ('embed', None, 'kv_heads', 'head_dim'), use_bias=False,
                        name='to_kv')(jnp.concatenate([x, latents], axis=1))
    out = _cosine_attention(self, q, kv[:, :, 0], kv[:, :, 1], null_kv=False, attn_impl=self.attn_impl)
    out = _dense_general(latents.shape[-1], ('heads', 'head_dim', 'embed'), axis=(-2, -1), use_bias=False,
                         name='to_out')(out)
    return _torch_norm(name='to_out_norm')(out)


class PerceiverResampler(nn.Module):
  """imagen PerceiverResampler (the U-Net's attn_pool): tokens [B, N, D] -> [B, mean_pooled + num_latents, D]."""
  num_latents: int
  max_seq_len: int
  heads: int
  dim_head: int
  attn_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, d = x.shape
    pos_emb = self.param('pos_emb', nn.with_logical_partitioning(_randn, ('length', 'embed')), (self.max_seq_len, d),
                         jnp.float32)
    latents = self.param('latents', nn.with_logical_partitioning(_randn, ('length', 'embed')), (self.num_latents, d),
                         jnp.float32)
    x_with_pos = x + pos_emb[:n].astype(x.dtype)
    pooled = _imagen_norm(name='mean_pooled_norm')(jnp.mean(x, axis=1))
    pooled = _dense(d * PERCEIVER_MEAN_POOLED_LATENTS, ('embed', 'mlp'), name='to_latents_from_mean_pooled_seq')(
        pooled).reshape(b, PERCEIVER_MEAN_POOLED_LATENTS, d)
    latents = jnp.concatenate([pooled, jnp.broadcast_to(latents.astype(x.dtype), (b, *latents.shape))], axis=1)
    for i in range(PERCEIVER_DEPTH):
      latents = latents + PerceiverAttention(self.heads, self.dim_head, self.attn_impl, name=f'layers_{i}_attn')(
          x_with_pos, latents)
      latents = latents + FeedForward(PERCEIVER_FF_MULT, name=f'layers_{i}_ff')(latents)
    return nn.with_logical_constraint(latents, _TOKEN_AXES)


def _pixel_unshuffle(x: jax.Array) -> jax.Array:
  """einops 'b c (h s1) (w s2) -> b (c s1 s2) h w' channels last: [B, H, W, C] -> [B, H/2, W/2, 4C]."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
  return x.reshape(b, h // 2, w // 2, 4 * c)


def _pixel_shuffle(x: jax.Array) -> jax.Array:
  """torch PixelShuffle(2) channels last: [B, H, W, 4C] (channel c*4 + 2i + j) -> [B, 2H, 2W, C]."""
  b, h, w, c4 = x.shape
  x = x.reshape(b, h, w, c4 // 4, 2, 2).transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(b, 2 * h, 2 * w, c4 // 4)


def _icnr_init(key: jax.Array, shape: tuple[int, ...], dtype: DTypeLike = jnp.float32) -> jax.Array:
  """imagen PixelShuffleUpsample's init: a kaiming-uniform [1, 1, C_in, C_out / 4] kernel with each output filter
  repeated 4 times ('o ... -> (o 4) ...'), so the shuffled output starts as a nearest-neighbour upsampling."""
  base = nn.initializers.he_uniform()(key, (*shape[:-1], shape[-1] // 4), dtype)
  return jnp.repeat(base, 4, axis=-1)


class Geo2MatUNet(nn.Module):
  """See the module docstring. x [B, H, W, channels] (H, W multiples of config.downsampling_factor), log_snr [B]
  (imagen's continuous time), cond_images [B, H, W, cond_images_channels], labels int [B], cond_drop_mask bool [B]
  (None: nothing dropped) -> [B, H, W, channels]."""
  config: Geo2MatConfig
  attn_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array, log_snr: jax.Array, cond_images: jax.Array, labels: jax.Array,
               cond_drop_mask: jax.Array | None = None) -> jax.Array:
    cfg = self.config
    self._check_inputs(x, log_snr, cond_images, labels)
    init_conv = self._init_conv(jnp.concatenate([cond_images.astype(x.dtype), x], axis=-1))
    t, tokens = self._conditioning(log_snr, labels, cond_drop_mask)
    resnet = functools.partial(ResnetBlock, groups=cfg.resnet_groups, heads=cfg.attn_heads,
                               dim_head=cfg.attn_dim_head, attn_impl=self.attn_impl)
    transformer = functools.partial(TransformerBlock, cfg.attn_heads, cfg.attn_dim_head, cfg.ff_mult,
                                    self.attn_impl)
    dims = [cfg.dim] + [cfg.dim * m for m in cfg.dim_mults]
    levels = len(cfg.dim_mults)
    x, hiddens = init_conv, []
    for i in range(levels):
      dim_in, dim_out = dims[i], dims[i + 1]
      cross = cfg.layer_cross_attns[i]
      x = resnet(dim_in, cross_attn=cross, name=f'downs_{i}_init_block')(x, t, tokens if cross else None)
      for j in range(cfg.num_resnet_blocks):
        x = resnet(dim_in, use_gca=True, name=f'downs_{i}_resnet_blocks_{j}')(x, t)
        hiddens.append(x)
      if cfg.layer_attns[i]:
        x = transformer(name=f'downs_{i}_attn_block')(x, tokens)
      hiddens.append(x)
      if i < levels - 1:
        x = _conv(dim_out, 1, name=f'downs_{i}_downsample')(_pixel_unshuffle(x))
      else:  # the last level changes width without downsampling: Parallel(3x3 conv, 1x1 conv)
        x = _conv(dim_out, 3, name=f'downs_{i}_out_3x3')(x) + _conv(dim_out, 1, name=f'downs_{i}_out_1x1')(x)
    # imagen builds the mid blocks without the attention kwargs (CrossAttention's own 8 x 64 heads) and the mid
    # transformer with TransformerBlock's default ff_mult.
    mid = functools.partial(resnet, dims[-1], cross_attn=True, heads=MID_HEADS, dim_head=MID_DIM_HEAD)
    x = mid(name='mid_block1')(x, t, tokens)
    x = TransformerBlock(cfg.attn_heads, cfg.attn_dim_head, MID_FF_MULT, self.attn_impl, name='mid_attn')(x)
    x = mid(name='mid_block2')(x, t, tokens)
    skip_scale = 2 ** -0.5
    for i in reversed(range(levels)):
      dim_in, dim_out = dims[i], dims[i + 1]
      cross = cfg.layer_cross_attns[i]
      x = jnp.concatenate([x, hiddens.pop() * skip_scale], axis=-1)
      x = resnet(dim_out, cross_attn=cross, name=f'ups_{i}_init_block')(x, t, tokens if cross else None)
      for j in range(cfg.num_resnet_blocks):
        x = jnp.concatenate([x, hiddens.pop() * skip_scale], axis=-1)
        x = resnet(dim_out, use_gca=True, name=f'ups_{i}_resnet_blocks_{j}')(x, t)
      if cfg.layer_attns[i]:
        x = transformer(name=f'ups_{i}_attn_block')(x, tokens)
      if i > 0:
        up = Conv2d(dim_in * 4, 1, kernel_init=_icnr_init, name=f'ups_{i}_upsample')(x)
        x = _pixel_shuffle(jax.nn.silu(up))
    if cfg.init_conv_to_final_conv_residual:
      x = jnp.concatenate([x, init_conv], axis=-1)
    x = resnet(cfg.dim, use_gca=True, name='final_res_block')(x, t)
    return Conv2d(cfg.channels, 3, kernel_init=nn.initializers.zeros_init(), name='final_conv')(x)

  def _init_conv(self, x: jax.Array) -> jax.Array:
    """imagen CrossEmbedLayer (stride 1): convs of the sorted kernel sizes, widths dim/2, dim/4, ..., the rest."""
    kernels = sorted(self.config.init_cross_embed_kernel_sizes)
    widths = [self.config.dim // 2 ** i for i in range(1, len(kernels))]
    widths.append(self.config.dim - sum(widths))
    outs = [_conv(w, k, name=f'init_conv_{j}')(x) for j, (k, w) in enumerate(zip(kernels, widths))]
    return nn.with_logical_constraint(jnp.concatenate(outs, axis=-1), SPATIAL_AXES)

  def _conditioning(self, log_snr: jax.Array, labels: jax.Array,
                    cond_drop_mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """(t [B, time_cond_dim] for the resnets, tokens [B, num_time_tokens + pooled latents, cond_dim])."""
    cfg = self.config
    b, d = labels.shape[0], cfg.token_dim
    weights = self.param('learned_sinu_weights', nn.with_logical_partitioning(_randn, (None,)),
                         (cfg.learned_sinu_pos_emb_dim // 2,), jnp.float32)
    ls = log_snr.astype(jnp.float32)[:, None]
    freqs = ls * weights[None, :] * 2 * math.pi
    fourier = jnp.concatenate([ls, jnp.sin(freqs), jnp.cos(freqs)], axis=-1)
    time_hiddens = jax.nn.silu(_dense(cfg.time_cond_dim, (None, 'mlp'), name='to_time_hiddens')(fourier))
    time_tokens = _dense(d * cfg.num_time_tokens, ('mlp', 'embed'), name='to_time_tokens')(time_hiddens)
    t = _dense(cfg.time_cond_dim, ('mlp', 'embed'), name='to_time_cond')(time_hiddens)

    keep = labels < cfg.num_classes
    if cond_drop_mask is not None:
      keep &= ~cond_drop_mask
    table = self.param('label_embed', nn.with_logical_partitioning(_randn, ('vocab', 'embed')),
                       (cfg.num_classes, cfg.text_embed_dim), jnp.float32)
    table = table if cfg.train_label_embed else jax.lax.stop_gradient(table)
    text = table[jnp.clip(labels, 0, cfg.num_classes - 1)][:, None, :]
    text = _dense(d, ('embed', 'mlp'), name='text_to_cond')(text)
    null_text_embed = self.param('null_text_embed', nn.with_logical_partitioning(_randn, (None, 'length', 'embed')),
                                 (1, cfg.max_text_len, d), jnp.float32)
    # The one real token sits at position 0; the padding positions always take the null embeddings.
    text = jnp.pad(text, ((0, 0), (0, cfg.max_text_len - 1), (0, 0)))
    real = (jnp.arange(cfg.max_text_len)[None, :] == 0) & keep[:, None]
    text = jnp.where(real[:, :, None], text, null_text_embed)
    text = PerceiverResampler(cfg.attn_pool_num_latents, cfg.attn_pool_max_seq_len, cfg.attn_heads, cfg.attn_dim_head,
                              self.attn_impl, name='attn_pool')(text)
    h = _torch_norm(name='to_text_non_attn_cond_norm')(jnp.mean(text, axis=1))
    h = jax.nn.silu(_dense(cfg.time_cond_dim, ('embed', 'mlp'), name='to_text_non_attn_cond_0')(h))
    text_hiddens = _dense(cfg.time_cond_dim, ('mlp', 'embed'), name='to_text_non_attn_cond_1')(h)
    null_text_hidden = self.param('null_text_hidden', nn.with_logical_partitioning(_randn, (None, 'embed')),
                                  (1, cfg.time_cond_dim), jnp.float32)
    t = t + jnp.where(keep[:, None], text_hiddens, null_text_hidden)
    tokens = jnp.concatenate([time_tokens.reshape(b, cfg.num_time_tokens, d), text], axis=1)
    return t, _torch_norm(name='norm_cond')(tokens)

  def _check_inputs(self, x: jax.Array, log_snr: jax.Array, cond_images: jax.Array, labels: jax.Array) -> None:
    cfg = self.config
    f = cfg.downsampling_factor
    if x.ndim != 4 or x.shape[-1] != cfg.channels or x.shape[1] % f or x.shape[2] % f:
      raise ValueError(f'Geo2MatUNet x must be [B, H, W, {cfg.channels}] with H and W multiples of {f}, got shape '
                       f'{x.shape}.')
    b = x.shape[0]
    if cond_images.shape != (*x.shape[:3], cfg.cond_images_channels):
      raise ValueError(f'Geo2MatUNet cond_images must be [{b}, {x.shape[1]}, {x.shape[2]}, '
                       f'{cfg.cond_images_channels}] (the geometry at the sample size), got {cond_images.shape}.')
    for name, value in (('log_snr', log_snr), ('labels', labels)):
      if value.shape != (b,):
        raise ValueError(f'Geo2MatUNet {name} must be [{b}], got shape {value.shape}.')
