"""CLIP vision and text towers (HF `CLIPVisionModel`, `CLIPTextModel` and their `...WithProjection` variants).

The encoder layers are `mmjax.nn.EncoderBlock`s, as in mmjax.models.siglip; the weight key map renames HF
`layer_norm1/2`, `self_attn.out_proj` to `layernorm_before/after`, `attention/o_proj`. Parameter trees:

  vision: class_embedding [E]   patch_embedding/kernel [p, p, C, E] (no bias)   position_embedding [1 + N, E]
          pre_layrnorm/{scale, bias}   layers_{i}/...   post_layernorm/{scale, bias}
  text:   token_embedding/embedding [V, E]   position_embedding [max_position_embeddings, E]   layers_{i}/...
          final_layer_norm/{scale, bias}
  with projection: vision_model/... + visual_projection/kernel [E, P], text_model/... + text_projection/kernel
"""
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmjax.models.siglip import HF_ACTIVATIONS
from mmjax.nn.embeddings import PatchEmbed
from mmjax.nn.linear import Dense
from mmjax.nn.norms import LayerNorm
from mmjax.nn.vit import EncoderBlock

_SIZE_KEYS = ('hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads')
# The projection kernel [E, P]: P is sharded like an MLP hidden axis.
_PROJECTION_AXES = ('embed', 'mlp')
# HF's CLIPTextModel pools at the argmax of the ids when its config says eos_token_id == 2 (checkpoints older than
# transformers PR #24773, whose EOS is the highest id), and at the first eos_token_id otherwise.
LEGACY_EOS_TOKEN_ID = 2


def _check_common(name: str, hidden_act: str, hidden_size: int, num_attention_heads: int) -> None:
  if hidden_act not in HF_ACTIVATIONS:
    raise ValueError(f'Unsupported {name} hidden_act {hidden_act!r}; choose one of {sorted(HF_ACTIVATIONS)}.')
  if hidden_size % num_attention_heads:
    raise ValueError(f'{name}: hidden_size {hidden_size} must be a multiple of num_attention_heads '
                     f'{num_attention_heads}.')


def _read_fields(cls: type, d: Mapping[str, Any], name: str, sizes: Sequence[str], projection_arch: str) -> Any:
  missing = [k for k in sizes if k not in d]
  if missing:
    raise ValueError(f'{name} config.json lacks {missing}.')
  fields = {f.name for f in dataclasses.fields(cls)} - {'with_projection'}
  return cls(**{k: v for k, v in d.items() if k in fields},
             with_projection=projection_arch in (d.get('architectures') or ()))


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
  """The fields of HF `CLIPVisionConfig`; hidden_act is the HF name ('quick_gelu' for OpenAI CLIP, 'gelu' exact).

  with_projection: the checkpoint is a `CLIPVisionModelWithProjection` (HF `architectures`), i.e. it carries
  `visual_projection` [P, E] with P = projection_dim.
  """
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  image_size: int
  patch_size: int
  num_channels: int = 3
  hidden_act: str = 'quick_gelu'
  layer_norm_eps: float = 1e-5
  projection_dim: int = 512
  with_projection: bool = False

  def __post_init__(self):
    _check_common('CLIP vision', self.hidden_act, self.hidden_size, self.num_attention_heads)
    if not isinstance(self.image_size, int) or not isinstance(self.patch_size, int):
      raise ValueError(f'image_size and patch_size must be integers (square images), got {self.image_size!r} '
                       f'and {self.patch_size!r}.')
    if self.image_size < self.patch_size:
      raise ValueError(f'image_size {self.image_size} must be at least patch_size {self.patch_size}.')

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any]) -> 'CLIPVisionConfig':
    """Reads an HF `clip_vision_model` config.json dict."""
    return _read_fields(cls, d, 'CLIP vision', (*_SIZE_KEYS, 'image_size', 'patch_size'),
                        'CLIPVisionModelWithProjection')

  def to_hf_dict(self) -> dict[str, Any]:
    fields = {k: v for k, v in dataclasses.asdict(self).items() if k != 'with_projection'}
    arch = 'CLIPVisionModelWithProjection' if self.with_projection else 'CLIPVisionModel'
    return {'model_type': 'clip_vision_model', 'architectures': [arch], **fields}


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
  """The fields of HF `CLIPTextConfig` (its defaults for the token ids and norms).

  eos_token_id picks the pooled token (see LEGACY_EOS_TOKEN_ID); pad and bos ids are carried for the round trip.
  with_projection: the checkpoint is a `CLIPTextModelWithProjection`, carrying `text_projection` [P, E].
  """
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  max_position_embeddings: int = 77
  hidden_act: str = 'quick_gelu'
  layer_norm_eps: float = 1e-5
  projection_dim: int = 512
  pad_token_id: int | None = 1
  bos_token_id: int | None = 49406
  eos_token_id: int = 49407
  with_projection: bool = False

  def __post_init__(self):
    _check_common('CLIP text', self.hidden_act, self.hidden_size, self.num_attention_heads)
    if not isinstance(self.eos_token_id, int):
      raise ValueError(f'CLIP text eos_token_id must be one integer (the pooled token), got {self.eos_token_id!r}.')

  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any]) -> 'CLIPTextConfig':
    """Reads an HF `clip_text_model` config.json dict."""
    return _read_fields(cls, d, 'CLIP text', ('vocab_size', *_SIZE_KEYS), 'CLIPTextModelWithProjection')

  def to_hf_dict(self) -> dict[str, Any]:
    fields = {k: v for k, v in dataclasses.asdict(self).items() if k != 'with_projection'}
    arch = 'CLIPTextModelWithProjection' if self.with_projection else 'CLIPTextModel'
    return {'model_type': 'clip_text_model', 'architectures': [arch], **fields}


def _encoder_layers(config: CLIPVisionConfig | CLIPTextConfig, remat: bool, attn_impl: str, dtype: DTypeLike | None,
                    param_dtype: DTypeLike) -> list[nn.Module]:
  # static_argnums counts self as 0: `deterministic` must stay a Python bool inside the remat.
  block_cls = nn.remat(EncoderBlock, static_argnums=(3,)) if remat else EncoderBlock
  return [block_cls(config.num_attention_heads, config.intermediate_size, activation=HF_ACTIVATIONS[config.hidden_act],
                    layer_norm_eps=config.layer_norm_eps, attn_impl=attn_impl, dtype=dtype, param_dtype=param_dtype)
          for _ in range(config.num_hidden_layers)]


def _feature_depth(feature_layer: int | None, num_layers: int) -> int:
  """The number of layers whose output is HF `hidden_states[feature_layer]` (all of them for None)."""
  if feature_layer is not None and not -(num_layers + 1) <= feature_layer <= num_layers:
    raise ValueError(f'feature_layer must be in [{-(num_layers + 1)}, {num_layers}] for {num_layers} layers, '
                     f'got {feature_layer}.')
  return num_layers if feature_layer is None else feature_layer % (num_layers + 1)


def _encode(layers: Sequence[nn.Module], x: jax.Array, mask: jax.Array | None, depth: int, run_all: bool
            ) -> jax.Array:
  """The output of the first `depth` layers on embeddings x [B, S, E]. Layers past depth run only when run_all (at
  init, so that it creates every parameter)."""
  features = x
  for i, layer in enumerate(layers[:len(layers) if run_all else depth]):
    x = layer(x, mask, True)
    if i + 1 == depth:
      features = x
  return features


class CLIPVisionModel(nn.Module):
  """pixel_values [B, H, W, C] (channels last, H = W = image_size, normalised) -> tokens [B, 1 + N, E], the CLS
  token first.

  dtype is the compute dtype, param_dtype the storage dtype; remat=True recomputes each encoder layer in the
  backward pass. LLaVA takes the patch tokens of a layer: `tower(pixels, feature_layer=-2)[:, 1:]`.
  """
  config: CLIPVisionConfig
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32
  remat: bool = False
  attn_impl: str = 'auto'

  def setup(self):
    cfg = self.config
    width = cfg.hidden_size
    self.class_embedding = self.param(
        'class_embedding', nn.with_logical_partitioning(nn.initializers.normal(width ** -0.5), ('embed',)),
        (width,), self.param_dtype)
    self.patch_embedding = PatchEmbed(cfg.patch_size, width, use_bias=False, drop_remainder=True, dtype=self.dtype,
                                      param_dtype=self.param_dtype)
    self.position_embedding = self.param(
        'position_embedding', nn.with_logical_partitioning(nn.initializers.normal(width ** -0.5), ('length', 'embed')),
        (1 + cfg.num_patches, width), self.param_dtype)
    self.pre_layrnorm = LayerNorm(eps=cfg.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
    self.layers = _encoder_layers(cfg, self.remat, self.attn_impl, self.dtype, self.param_dtype)
    self.post_layernorm = LayerNorm(eps=cfg.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)

  def __call__(self, pixel_values: jax.Array, *, feature_layer: int | None = None) -> jax.Array:
    """Tokens [B, 1 + N, E], N = (image_size // patch_size)^2, CLS at index 0.

    feature_layer=None: the last layer's output (HF `last_hidden_state`; CLIP applies post_layernorm only to the
    pooled CLS token). feature_layer=k: HF `hidden_states[k]` (0 = the embeddings after pre_layrnorm, i = output
    of layer i, negative counts from the end: -2 = the penultimate layer). Layers after k are not run.
    """
    depth = _feature_depth(feature_layer, self.config.num_hidden_layers)
    hidden = _encode(self.layers, self.embed(pixel_values), None, depth, self.is_initializing())
    if self.is_initializing():
      self.post_layernorm(hidden[:, 0])
    return hidden

  def embed(self, pixel_values: jax.Array) -> jax.Array:
    """pre_layrnorm(CLS and patch embeddings plus positions): [B, H, W, C] -> [B, 1 + N, E] (HF
    `hidden_states[0]`)."""
    cfg = self.config
    expected = (cfg.image_size, cfg.image_size, cfg.num_channels)
    if pixel_values.ndim != 4 or pixel_values.shape[1:] != expected:
      raise ValueError(f'pixel_values must be [B, {", ".join(map(str, expected))}] (channels last), '
                       f'got shape {pixel_values.shape}.')
    patches = self.patch_embedding(pixel_values)
    cls = jnp.broadcast_to(self.class_embedding.astype(patches.dtype), (patches.shape[0], 1, patches.shape[-1]))
    x = jnp.concatenate([cls, patches], axis=1) + self.position_embedding.astype(patches.dtype)
    return self.pre_layrnorm(nn.with_logical_constraint(x, ('batch', 'length', 'embed')))

  def pool(self, pixel_values: jax.Array) -> jax.Array:
    """post_layernorm of the last layer's CLS token [B, E] (HF `pooler_output`)."""
    return self.post_layernorm(self(pixel_values)[:, 0])


class CLIPTextModel(nn.Module):
  """input_ids [B, L] (L <= max_position_embeddings) -> token states [B, L, E] under causal self-attention.

  attention_mask [B, L] (1 = token, 0 = padding) hides padded keys, as in HF; the states at padded positions are
  not meaningful. Fields as in CLIPVisionModel.
  """
  config: CLIPTextConfig
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32
  remat: bool = False
  attn_impl: str = 'auto'

  def setup(self):
    cfg = self.config
    self.token_embedding = nn.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ('vocab', 'embed')))
    self.position_embedding = self.param(
        'position_embedding', nn.with_logical_partitioning(nn.initializers.normal(0.01), ('length', 'embed')),
        (cfg.max_position_embeddings, cfg.hidden_size), self.param_dtype)
    self.layers = _encoder_layers(cfg, self.remat, self.attn_impl, self.dtype, self.param_dtype)
    self.final_layer_norm = LayerNorm(eps=cfg.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)

  def __call__(self, input_ids: jax.Array, *, attention_mask: jax.Array | None = None,
               feature_layer: int | None = None) -> jax.Array:
    """Token states [B, L, E].

    feature_layer=None: final_layer_norm of the last layer's output (HF `last_hidden_state`, what SD 1.5
    conditions on). feature_layer=k: HF `hidden_states[k]`, before any norm (0 = the embeddings, -2 = the
    penultimate layer, "clip skip"). Layers after k are not run.
    """
    depth = _feature_depth(feature_layer, self.config.num_hidden_layers)
    length = input_ids.shape[-1]
    if input_ids.ndim != 2 or length > self.config.max_position_embeddings:
      raise ValueError(f'input_ids must be [B, L] with L <= max_position_embeddings '
                       f'{self.config.max_position_embeddings}, got shape {input_ids.shape}.')
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
      raise ValueError(f'attention_mask must have the shape of input_ids {input_ids.shape}, got '
                       f'{attention_mask.shape}.')
    x = self.token_embedding(input_ids)
    x = nn.with_logical_constraint(x + self.position_embedding[:length].astype(x.dtype), ('batch', 'length', 'embed'))
    # EncoderBlock takes one boolean mask, so causality and padding travel in it; an explicit mask keeps 'auto'
    # attention on XLA, which costs little at CLIP's 77 tokens.
    mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
    if attention_mask is not None:
      mask = mask & attention_mask.astype(bool)[:, None, None, :]
    hidden = _encode(self.layers, x, mask, depth, self.is_initializing())
    if feature_layer is None:
      return self.final_layer_norm(hidden)
    if self.is_initializing():
      self.final_layer_norm(hidden)
    return hidden

  def pool(self, input_ids: jax.Array, *, attention_mask: jax.Array | None = None) -> jax.Array:
    """The last_hidden_state of each row's EOS token [B, E] (HF `pooler_output`): the first eos_token_id, or the
    largest id when eos_token_id is the legacy 2. A row without EOS pools its first token, as HF does."""
    hidden = self(input_ids, attention_mask=attention_mask)
    if self.config.eos_token_id == LEGACY_EOS_TOKEN_ID:
      index = jnp.argmax(input_ids, axis=-1)
    else:
      index = jnp.argmax(input_ids == self.config.eos_token_id, axis=-1)
    return jnp.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0]


class CLIPVisionModelWithProjection(nn.Module):
  """CLIPVisionModel (`vision_model`) with `visual_projection` (no bias): the image embedding of CLIP's joint
  space, as IP-Adapter's image encoder uses it. `__call__` and `pool` are the tower's."""
  config: CLIPVisionConfig
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32
  remat: bool = False
  attn_impl: str = 'auto'

  def setup(self):
    self.vision_model = CLIPVisionModel(self.config, self.dtype, self.param_dtype, self.remat, self.attn_impl)
    self.visual_projection = Dense(self.config.projection_dim, _PROJECTION_AXES, use_bias=False, dtype=self.dtype,
                                   param_dtype=self.param_dtype)

  def __call__(self, pixel_values: jax.Array, *, feature_layer: int | None = None) -> jax.Array:
    hidden = self.vision_model(pixel_values, feature_layer=feature_layer)
    if self.is_initializing():
      self.visual_projection(hidden[:, 0])
    return hidden

  def pool(self, pixel_values: jax.Array) -> jax.Array:
    return self.vision_model.pool(pixel_values)

  def image_embeds(self, pixel_values: jax.Array) -> jax.Array:
    """visual_projection of the pooled CLS token: [B, H, W, C] -> [B, P] (HF `image_embeds`, not normalised)."""
    return self.visual_projection(self.pool(pixel_values))


class CLIPTextModelWithProjection(nn.Module):
  """CLIPTextModel (`text_model`) with `text_projection` (no bias). `__call__` and `pool` are the tower's."""
  config: CLIPTextConfig
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32
  remat: bool = False
  attn_impl: str = 'auto'

  def setup(self):
    self.text_model = CLIPTextModel(self.config, self.dtype, self.param_dtype, self.remat, self.attn_impl)
    self.text_projection = Dense(self.config.projection_dim, _PROJECTION_AXES, use_bias=False, dtype=self.dtype,
                                 param_dtype=self.param_dtype)

  def __call__(self, input_ids: jax.Array, *, attention_mask: jax.Array | None = None,
               feature_layer: int | None = None) -> jax.Array:
    hidden = self.text_model(input_ids, attention_mask=attention_mask, feature_layer=feature_layer)
    if self.is_initializing():
      self.text_projection(hidden[:, 0])
    return hidden

  def pool(self, input_ids: jax.Array, *, attention_mask: jax.Array | None = None) -> jax.Array:
    return self.text_model.pool(input_ids, attention_mask=attention_mask)

  def text_embeds(self, input_ids: jax.Array, *, attention_mask: jax.Array | None = None) -> jax.Array:
    """text_projection of the pooled EOS token: [B, L] -> [B, P] (HF `text_embeds`, not normalised)."""
    return self.text_projection(self.pool(input_ids, attention_mask=attention_mask))
