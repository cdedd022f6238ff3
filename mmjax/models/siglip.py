"""SigLIP vision tower (HF `SiglipVisionModel`): patch embedding, learned positions, pre-LN encoder, post-LN, and
the optional attention-pooling head.

The encoder layers are `mmjax.nn.EncoderBlock`s; the weight key map renames HF `layer_norm1/2`,
`self_attn.out_proj` to `layernorm_before/after`, `attention/o_proj`. Parameter tree:

  patch_embedding/{kernel [p, p, C, E], bias}   position_embedding [N, E]   post_layernorm/{scale, bias}
  layers_{i}/{layernorm_before, attention/{q,k,v,o}_proj, layernorm_after, mlp/{fc1, fc2}}
  head/{probe [1, 1, E], attention/in_proj/{kernel [E, 3, H, D], bias}, attention/out_proj, layernorm, mlp}
"""
import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmjax.nn.attention import dot_product_attention
from mmjax.nn.embeddings import PatchEmbed
from mmjax.nn.linear import DenseGeneral
from mmjax.nn.mlp import Mlp
from mmjax.nn.norms import LayerNorm
from mmjax.nn.vit import EncoderBlock

# HF activation name -> mmjax.nn activation name.
HF_ACTIVATIONS = {'gelu_pytorch_tanh': 'gelu_tanh', 'gelu_new': 'gelu_tanh', 'gelu': 'gelu',
                  'quick_gelu': 'quick_gelu', 'relu': 'relu', 'silu': 'silu'}
_HF_SIZE_KEYS = ('hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads', 'image_size',
                 'patch_size')


@dataclasses.dataclass(frozen=True)
class SiglipVisionConfig:
  """The fields of HF `SiglipVisionConfig`; hidden_act is the HF name (e.g. 'gelu_pytorch_tanh')."""
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  image_size: int
  patch_size: int
  num_channels: int = 3
  hidden_act: str = 'gelu_pytorch_tanh'
  layer_norm_eps: float = 1e-6
  vision_use_head: bool = True

  def __post_init__(self):
    if self.hidden_act not in HF_ACTIVATIONS:
      raise ValueError(f'Unsupported SigLIP hidden_act {self.hidden_act!r}; choose one of {sorted(HF_ACTIVATIONS)}.')
    if not isinstance(self.image_size, int) or not isinstance(self.patch_size, int):
      raise ValueError(f'image_size and patch_size must be integers (square images), got {self.image_size!r} '
                       f'and {self.patch_size!r}.')
    # image_size need not be a multiple of patch_size: the patch embedding drops the remainder as torch's Conv2d
    # does (so400m: 384 px, patch 14 -> 27 x 27 patches).
    if self.image_size < self.patch_size or self.hidden_size % self.num_attention_heads:
      raise ValueError(f'image_size {self.image_size} must be at least patch_size {self.patch_size} and '
                       f'hidden_size {self.hidden_size} a multiple of num_attention_heads '
                       f'{self.num_attention_heads}.')

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any]) -> 'SiglipVisionConfig':
    """Reads an HF `siglip_vision_model` config.json dict."""
    missing = [k for k in _HF_SIZE_KEYS if k not in d]
    if missing:
      raise ValueError(f'SigLIP vision config.json lacks {missing}.')
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in fields})

  def to_hf_dict(self) -> dict[str, Any]:
    return {'model_type': 'siglip_vision_model', 'architectures': ['SiglipVisionModel'], **dataclasses.asdict(self)}


class ProbeAttention(nn.Module):
  """torch.nn.MultiheadAttention with its fused input projection: query [B, Q, E] attends to x [B, N, E].

  in_proj kernel [E, 3, H, D] holds the q, k, v projections in that order (torch's in_proj_weight [3E, E]).
  Projecting all three for both inputs keeps that one parameter; the head is a small part of the tower.
  """
  num_heads: int
  attn_impl: str = 'auto'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, query: jax.Array, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    dense = functools.partial(DenseGeneral, dtype=self.dtype, param_dtype=self.param_dtype)
    in_proj = dense((3, self.num_heads, width // self.num_heads), ('embed', None, 'heads', 'head_dim'),
                    name='in_proj')
    q = in_proj(query)[..., 0, :, :]
    kv = in_proj(x)
    out = dot_product_attention(q, kv[..., 1, :, :], kv[..., 2, :, :], impl=self.attn_impl)
    return dense(width, ('heads', 'head_dim', 'embed'), axis=(-2, -1), name='out_proj')(out)


class SiglipAttentionPoolingHead(nn.Module):
  """HF SiglipMultiheadAttentionPoolingHead: a learned probe attends to x [B, N, E], then a residual MLP; -> [B, E]."""
  config: SiglipVisionConfig
  attn_impl: str = 'auto'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    probe = self.param('probe', nn.with_logical_partitioning(nn.initializers.xavier_uniform(), (None, None, 'embed')),
                       (1, 1, cfg.hidden_size), self.param_dtype)
    query = jnp.broadcast_to(probe, (x.shape[0], 1, cfg.hidden_size)).astype(x.dtype)
    h = ProbeAttention(cfg.num_attention_heads, self.attn_impl, self.dtype, self.param_dtype, name='attention')(
        query, x)
    normed = LayerNorm(eps=cfg.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name='layernorm')(h)
    h = h + Mlp(cfg.intermediate_size, activation=HF_ACTIVATIONS[cfg.hidden_act], dtype=self.dtype,
                param_dtype=self.param_dtype, name='mlp')(normed)
    return h[:, 0]


class SiglipVisionModel(nn.Module):
  """pixel_values [B, H, W, C] (channels last, H = W = image_size, normalised) -> patch features [B, N, E].

  dtype is the compute dtype, param_dtype the storage dtype; remat=True recomputes each encoder layer in the
  backward pass.
  """
  config: SiglipVisionConfig
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32
  remat: bool = False
  attn_impl: str = 'auto'

  def setup(self):
    cfg = self.config
    self.patch_embedding = PatchEmbed(cfg.patch_size, cfg.hidden_size, drop_remainder=True, dtype=self.dtype,
                                      param_dtype=self.param_dtype)
    self.position_embedding = self.param(
        'position_embedding', nn.with_logical_partitioning(nn.initializers.normal(cfg.hidden_size ** -0.5),
                                                           ('length', 'embed')),
        (cfg.num_patches, cfg.hidden_size), self.param_dtype)
    # static_argnums counts self as 0: `deterministic` must stay a Python bool inside the remat.
    block_cls = nn.remat(EncoderBlock, static_argnums=(3,)) if self.remat else EncoderBlock
    self.layers = [block_cls(cfg.num_attention_heads, cfg.intermediate_size,
                             activation=HF_ACTIVATIONS[cfg.hidden_act], layer_norm_eps=cfg.layer_norm_eps,
                             attn_impl=self.attn_impl, dtype=self.dtype, param_dtype=self.param_dtype)
                   for _ in range(cfg.num_hidden_layers)]
    self.post_layernorm = LayerNorm(eps=cfg.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
    if cfg.vision_use_head:
      self.head = SiglipAttentionPoolingHead(cfg, self.attn_impl, self.dtype, self.param_dtype)

  def __call__(self, pixel_values: jax.Array, *, feature_layer: int | None = None) -> jax.Array:
    """Patch features [B, N, E], N = (image_size // patch_size)^2.

    feature_layer=None: the last layer's output after post_layernorm (HF `last_hidden_state`).
    feature_layer=k: the raw hidden state HF reports as `hidden_states[k]` (0 = embeddings, i = output of layer
    i, negative counts from the end: -1 = last layer before post_layernorm, -2 = the one before). Layers after
    k are not run.
    """
    num_layers = self.config.num_hidden_layers
    if feature_layer is not None and not -(num_layers + 1) <= feature_layer <= num_layers:
      raise ValueError(f'feature_layer must be in [{-(num_layers + 1)}, {num_layers}] for {num_layers} layers, '
                       f'got {feature_layer}.')
    depth = num_layers if feature_layer is None else feature_layer % (num_layers + 1)
    # init runs every layer, the post-LN and the head, so that it creates all parameters.
    run_all = feature_layer is None or self.is_initializing()
    x = self.embed(pixel_values)
    features = x
    for i, layer in enumerate(self.layers[:num_layers if run_all else depth]):
      x = layer(x, None, True)
      if i + 1 == depth:
        features = x
    if not run_all:
      return features
    last_hidden_state = self.post_layernorm(x)
    if self.is_initializing() and self.config.vision_use_head:
      self.head(last_hidden_state)
    return last_hidden_state if feature_layer is None else features

  def embed(self, pixel_values: jax.Array) -> jax.Array:
    """Patch embeddings plus positions: [B, H, W, C] -> [B, N, E] (HF `hidden_states[0]`)."""
    cfg = self.config
    expected = (cfg.image_size, cfg.image_size, cfg.num_channels)
    if pixel_values.ndim != 4 or pixel_values.shape[1:] != expected:
      raise ValueError(f'pixel_values must be [B, {", ".join(map(str, expected))}] (channels last), '
                       f'got shape {pixel_values.shape}.')
    x = self.patch_embedding(pixel_values)
    return x + self.position_embedding.astype(x.dtype)

  def pool(self, pixel_values: jax.Array) -> jax.Array:
    """The attention-pooling head's output [B, E] (HF `pooler_output`); needs config.vision_use_head."""
    if not self.config.vision_use_head:
      raise ValueError('This SigLIP config has vision_use_head=False: there is no pooling head.')
    return self.head(self(pixel_values))
