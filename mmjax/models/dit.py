"""DiT (Peebles & Xie, 2023) as diffusers' `DiTTransformer2DModel`: patch embedding, fixed 2-D sin-cos positions,
adaLN-Zero transformer blocks conditioned on timestep + class, final adaLN, linear and unpatchify.

Channels last: `DiT(config).apply({'params': p}, sample [B, H, W, C], timestep [B], class_labels [B])` returns
[B, H, W, C_out] (C_out = 2C with learned sigma: ε then the variance interpolation v).

As in diffusers (and unlike the original DiT, which shares one), every block owns its timestep and class embedders
(`norm1/emb`), and the final layer reuses block 0's. The class table has num_classes + 1 rows: the last one is the
null label of classifier-free guidance. Parameter tree (E = heads * head_dim):

  patch_embed/{kernel [p, p, C, E], bias}
  layers_{i}/norm1/emb/{linear_1 [256, E], linear_2 [E, E], embedding_table [num_classes + 1, E]}
  layers_{i}/norm1/linear [E, 6E]   layers_{i}/attn1/{q,k,v,o}_proj   layers_{i}/norm3 (with affine norms only)
  layers_{i}/ff/{fc1 [E, 4E], fc2 [4E, E]}   proj_out_1 [E, 2E]   proj_out_2 [E, p * p * C_out]

A fresh init follows the DiT paper: xavier-uniform linears (the patch conv as a flattened linear), N(0, 0.02)
timestep MLPs and class tables, and zeros in every adaLN modulation and in the output layer (adaLN-Zero).
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
from jax.typing import DTypeLike

from mmjax.nn.embeddings import PatchEmbed, sincos_2d_position_embedding, timestep_embedding
from mmjax.nn.linear import Dense
from mmjax.nn.mlp import Mlp
from mmjax.nn.multihead_attention import MultiHeadAttention
from mmjax.nn.norms import LayerNorm

# diffusers activation_fn -> mmjax.nn activation name.
DIFFUSERS_ACTIVATIONS = {'gelu-approximate': 'gelu_tanh', 'gelu': 'gelu'}
# Width of the sinusoidal timestep features fed to the timestep MLP (fixed in diffusers and DiT).
TIMESTEP_FREQUENCIES = 256
# diffusers Transformer2DModel keys that would make the model something other than a DiT, with their DiT values.
_TRANSFORMER_2D_DIT_VALUES = {'cross_attention_dim': None, 'num_vector_embeds': None, 'only_cross_attention': False,
                              'double_self_attention': False, 'attention_type': 'default', 'caption_channels': None}
# Transformer2DModel's defaults where they differ from DiTTransformer2DModel's (a config.json may omit a key).
_TRANSFORMER_2D_DEFAULTS = {'attention_head_dim': 88, 'num_layers': 1, 'attention_bias': False,
                            'activation_fn': 'geglu', 'norm_elementwise_affine': True, 'norm_type': 'layer_norm',
                            'in_channels': None, 'sample_size': None, 'patch_size': None, 'num_embeds_ada_norm': None,
                            'interpolation_scale': None}
_FIELDS_FROM_HF = ('num_attention_heads', 'attention_head_dim', 'in_channels', 'out_channels', 'num_layers',
                   'sample_size', 'patch_size', 'num_embeds_ada_norm', 'activation_fn', 'attention_bias',
                   'norm_elementwise_affine', 'norm_eps')
_AXES = ('batch', 'length', 'embed')
_xavier = nn.initializers.xavier_uniform()
_normal = nn.initializers.normal(0.02)
_zeros = nn.initializers.zeros_init()


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  """The fields of diffusers' DiTTransformer2DModel config (same names), plus interpolation_scale and
  downscale_freq_shift.

  num_embeds_ada_norm: the number of classes (the class table has one more row, the null label).
  out_channels: None means in_channels; 2 * in_channels is DiT's learned sigma.
  interpolation_scale: position-embedding coordinates are divided by it (DiTTransformer2DModel: 1; a
    Transformer2DModel config may set it, else max(sample_size // 64, 1)).
  downscale_freq_shift: the timestep frequencies are exp(-ln(1e4) k / (128 - shift)); diffusers hard-codes 1, the
    original DiT uses 0 (such a config cannot be written as a diffusers folder).
  """
  num_attention_heads: int = 16
  attention_head_dim: int = 72
  in_channels: int = 4
  out_channels: int | None = None
  num_layers: int = 28
  sample_size: int = 32
  patch_size: int = 2
  num_embeds_ada_norm: int = 1000
  activation_fn: str = 'gelu-approximate'
  attention_bias: bool = True
  norm_elementwise_affine: bool = False
  norm_eps: float = 1e-5
  interpolation_scale: float = 1.0
  downscale_freq_shift: float = 1.0

  def __post_init__(self):
    if self.activation_fn not in DIFFUSERS_ACTIVATIONS:
      raise ValueError(f'Unsupported DiT activation_fn {self.activation_fn!r}; choose one of '
                       f'{sorted(DIFFUSERS_ACTIVATIONS)}.')
    if self.sample_size % self.patch_size:
      raise ValueError(f'DiT sample_size {self.sample_size} must be a multiple of patch_size {self.patch_size}.')
    if self.inner_dim % 4:
      raise ValueError(f'DiT width num_attention_heads * attention_head_dim = {self.inner_dim} must be a multiple of '
                       '4 (the 2-D sin-cos position embedding).')

  @property
  def inner_dim(self) -> int:
    return self.num_attention_heads * self.attention_head_dim

  @property
  def output_channels(self) -> int:
    return self.in_channels if self.out_channels is None else self.out_channels

  @property
  def num_classes(self) -> int:
    return self.num_embeds_ada_norm

  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any]) -> DiTConfig:
    """Reads a diffusers config.json of a DiTTransformer2DModel, or of a Transformer2DModel that is a DiT."""
    name = d.get('_class_name', 'DiTTransformer2DModel')
    if name == 'Transformer2DModel':
      d = {**_TRANSFORMER_2D_DEFAULTS, **d}
      for key, value in _TRANSFORMER_2D_DIT_VALUES.items():
        if d.get(key, value) != value:
          raise ValueError(f'Transformer2DModel {key}={d[key]!r} is not supported in a DiT (only {value!r}).')
    norm_type = d.get('norm_type', 'ada_norm_zero')
    needed = [k for k in ('in_channels', 'sample_size', 'patch_size', 'num_embeds_ada_norm') if k in d and d[k] is None]
    if norm_type != 'ada_norm_zero' or needed:
      raise ValueError(f'this {name} is not a DiT: it needs norm_type "ada_norm_zero" (got {norm_type!r}) and '
                       f'in_channels, sample_size, patch_size and num_embeds_ada_norm (missing: {needed}).')
    if d.get('dropout', 0.0):
      raise ValueError(f'DiT dropout {d["dropout"]} is not supported (only 0.0).')
    fields = {k: d[k] for k in _FIELDS_FROM_HF if k in d}
    if name == 'Transformer2DModel':
      scale = d['interpolation_scale']
      fields['interpolation_scale'] = max(d['sample_size'] // 64, 1) if scale is None else scale
    return cls(**fields)

  def to_hf_dict(self) -> dict[str, Any]:
    """A diffusers config.json dict: DiTTransformer2DModel, or Transformer2DModel when interpolation_scale != 1."""
    if self.downscale_freq_shift != 1.0:
      raise ValueError(f'DiTConfig downscale_freq_shift={self.downscale_freq_shift}: diffusers hard-codes 1, so this '
                       'model cannot be written as a diffusers folder.')
    d = {k: getattr(self, k) for k in _FIELDS_FROM_HF}
    d.update(norm_type='ada_norm_zero', dropout=0.0)
    if self.interpolation_scale == 1.0:
      return {'_class_name': 'DiTTransformer2DModel', **d}
    return {'_class_name': 'Transformer2DModel', **d, 'interpolation_scale': self.interpolation_scale}


class CombinedTimestepLabelEmbedding(nn.Module):
  """diffusers CombinedTimestepLabelEmbeddings: MLP(sinusoid(t)) + table[label]; t_freq [B, 256], labels [B] ->
  conditioning [B, E]."""
  num_classes: int
  features: int
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, t_freq: jax.Array, labels: jax.Array) -> jax.Array:
    dense = functools.partial(Dense, kernel_init=_normal, dtype=self.dtype, param_dtype=self.param_dtype)
    h = dense(self.features, (None, 'mlp'), name='linear_1')(t_freq)
    t_emb = dense(self.features, ('mlp', 'embed'), name='linear_2')(jax.nn.silu(h))
    table = self.param('embedding_table', nn.with_logical_partitioning(_normal, ('vocab', 'embed')),
                       (self.num_classes + 1, self.features), self.param_dtype)
    y_emb = jnp.take(table, labels, axis=0)
    return t_emb + y_emb.astype(t_emb.dtype)


class AdaLayerNormZero(nn.Module):
  """diffusers AdaLayerNormZero (with its embedder 'emb'): x [B, N, E] -> (modulated norm(x), conditioning [B, E],
  gate_msa, shift_mlp, scale_mlp, gate_mlp [B, E])."""
  num_classes: int
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, t_freq: jax.Array, labels: jax.Array) -> tuple[jax.Array, ...]:
    width = x.shape[-1]
    cond = CombinedTimestepLabelEmbedding(self.num_classes, width, self.dtype, self.param_dtype, name='emb')(
        t_freq, labels)
    mod = Dense(6 * width, ('embed', 'mlp'), kernel_init=_zeros, dtype=self.dtype, param_dtype=self.param_dtype,
                name='linear')(jax.nn.silu(cond))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)
    normed = LayerNorm(eps=1e-6, use_scale=False, use_bias=False, dtype=self.dtype, name='norm')(x)
    return modulate(normed, shift_msa, scale_msa), cond, gate_msa, shift_mlp, scale_mlp, gate_mlp


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """x [B, N, E] * (1 + scale[:, None]) + shift[:, None]."""
  return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
  """diffusers BasicTransformerBlock with norm_type 'ada_norm_zero': x [B, N, E] -> (x [B, N, E], conditioning
  [B, E] of this block's embedder)."""
  config: DiTConfig
  attn_impl: str = 'auto'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, t_freq: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    cfg = self.config
    x = nn.with_logical_constraint(x, _AXES)
    h, cond, gate_msa, shift_mlp, scale_mlp, gate_mlp = AdaLayerNormZero(
        cfg.num_classes, self.dtype, self.param_dtype, name='norm1')(x, t_freq, labels)
    h = MultiHeadAttention(cfg.num_attention_heads, cfg.attention_head_dim, qkv_bias=cfg.attention_bias,
                           out_bias=True, attn_impl=self.attn_impl, dtype=self.dtype, param_dtype=self.param_dtype,
                           kernel_init=_xavier, name='attn1')(h)
    x = nn.with_logical_constraint(x + gate_msa[:, None] * h, _AXES)
    affine = cfg.norm_elementwise_affine
    h = LayerNorm(eps=cfg.norm_eps, use_scale=affine, use_bias=affine, dtype=self.dtype,
                  param_dtype=self.param_dtype, name='norm3')(x)
    h = Mlp(4 * cfg.inner_dim, activation=DIFFUSERS_ACTIVATIONS[cfg.activation_fn], dtype=self.dtype,
            param_dtype=self.param_dtype, kernel_init=_xavier, name='ff')(modulate(h, shift_mlp, scale_mlp))
    return nn.with_logical_constraint(x + gate_mlp[:, None] * h, _AXES), cond


class DiT(nn.Module):
  """sample [B, H, W, C] (channels last; H, W multiples of patch_size), timestep [B] (int or float), class_labels
  int [B] in [0, num_classes] (num_classes = the null label) -> [B, H, W, C_out].

  class_dropout_prob: with deterministic=False, each label is replaced by the null label with this probability
    (classifier-free guidance training), drawing from the 'dropout' RNG stream; one draw serves every block.
  remat: recompute each block's activations in the backward pass.
  """
  config: DiTConfig
  class_dropout_prob: float = 0.1
  attn_impl: str = 'auto'
  remat: bool = False
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, sample: jax.Array, timestep: jax.Array, class_labels: jax.Array, *,
               deterministic: bool = True) -> jax.Array:
    cfg = self.config
    p = cfg.patch_size
    if sample.ndim != 4 or sample.shape[-1] != cfg.in_channels or sample.shape[1] % p or sample.shape[2] % p:
      raise ValueError(f'DiT sample must be [B, H, W, {cfg.in_channels}] with H and W multiples of patch_size {p}, '
                       f'got shape {sample.shape}.')
    batch = sample.shape[0]
    if timestep.shape != (batch,) or class_labels.shape != (batch,):
      raise ValueError(f'DiT timestep and class_labels must be [{batch}], got {timestep.shape} and '
                       f'{class_labels.shape}.')
    if not deterministic and self.class_dropout_prob > 0:
      drop = jax.random.bernoulli(self.make_rng('dropout'), self.class_dropout_prob, class_labels.shape)
      class_labels = jnp.where(drop, cfg.num_classes, class_labels)
    grid = (sample.shape[1] // p, sample.shape[2] // p)
    x = PatchEmbed(p, cfg.inner_dim, kernel_init=_xavier_conv, dtype=self.dtype, param_dtype=self.param_dtype,
                   name='patch_embed')(sample)
    pos = sincos_2d_position_embedding(cfg.inner_dim, grid, base_size=cfg.sample_size // p,
                                       interpolation_scale=cfg.interpolation_scale)
    x = x + pos.astype(x.dtype)
    t_freq = timestep_embedding(timestep, TIMESTEP_FREQUENCIES, flip_sin_to_cos=True,
                                downscale_freq_shift=cfg.downscale_freq_shift)
    t_freq = t_freq.astype(self.dtype or jnp.float32)
    block_cls = nn.remat(DiTBlock) if self.remat else DiTBlock
    cond = None
    for i in range(cfg.num_layers):
      x, block_cond = block_cls(cfg, self.attn_impl, self.dtype, self.param_dtype, name=f'layers_{i}')(
          x, t_freq, class_labels)
      cond = block_cond if cond is None else cond
    dense = functools.partial(Dense, kernel_init=_zeros, dtype=self.dtype, param_dtype=self.param_dtype)
    shift, scale = jnp.split(dense(2 * cfg.inner_dim, ('embed', 'mlp'), name='proj_out_1')(jax.nn.silu(cond)), 2,
                             axis=-1)
    x = modulate(LayerNorm(eps=1e-6, use_scale=False, use_bias=False, dtype=self.dtype, name='norm_out')(x), shift,
                 scale)
    x = dense(p * p * cfg.output_channels, ('embed', None), name='proj_out_2')(x)
    return einops.rearrange(x, 'b (h w) (p q c) -> b (h p) (w q) c', h=grid[0], w=grid[1], p=p, q=p)


def _xavier_conv(key: jax.Array, shape: tuple[int, ...], dtype: DTypeLike = jnp.float32) -> jax.Array:
  """Xavier-uniform on the patch conv [p, p, C, E] viewed as a linear [p * p * C, E] (as DiT initialises it)."""
  return _xavier(key, (shape[0] * shape[1] * shape[2], shape[3]), dtype).reshape(shape)


def dit_for_training(config: DiTConfig, *, class_dropout: float, remat_policy: str, compute_dtype: DTypeLike,
                     param_dtype: DTypeLike) -> DiT:
  """The DiT a trainer config describes (remat_policy 'none' or 'full': the DiT rematerialises whole blocks)."""
  if remat_policy not in ('none', 'full'):
    raise ValueError(f"config.remat_policy={remat_policy!r}: the DiT rematerialises whole blocks, choose 'none' or "
                     "'full'")
  return DiT(config, class_dropout_prob=class_dropout, remat=remat_policy == 'full', dtype=jnp.dtype(compute_dtype),
             param_dtype=jnp.dtype(param_dtype))


def train_flops_per_example(config: DiTConfig) -> float:
  """Matmul FLOPs of one training example, forward + backward (3x forward): per block the QKV/O and MLP matmuls
  (12 E² per token), attention (4 T² E) and the adaLN modulation (6 E²); the patch embedding and output layer."""
  width, patch = config.inner_dim, config.patch_size
  tokens = (config.sample_size // patch) ** 2
  per_block = 2 * tokens * 12 * width ** 2 + 4 * tokens ** 2 * width + 2 * 6 * width ** 2
  embed = 2 * tokens * patch ** 2 * width * (config.in_channels + config.output_channels)
  return 3.0 * (config.num_layers * per_block + embed)
