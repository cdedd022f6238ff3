"""The decoder-only transformer family (Qwen2, Llama-2/3/3.1/3.2, CodeLlama): one layer and one stack on the shared
layers of `mmjax.nn`; a family member (`qwen2.py`, `llama.py`) is a config reader around them.

Pre-RMSNorm blocks, grouped-query attention (`MultiHeadAttention`, q/k/v bias when `attention_bias`, no o_proj
bias) with RoPE (optionally scaled, `RopeScaling`) and a KV-cache hook, SwiGLU MLP, and optionally tied input/output
embeddings. Parameter tree (kernels in the layouts of `mmjax.nn`):

  embed_tokens/embedding [V, E]                      layers_{i}/input_layernorm/scale [E]
  layers_{i}/self_attn/{q,k,v}_proj/{kernel, bias}   layers_{i}/post_attention_layernorm/scale [E]
  layers_{i}/self_attn/o_proj/kernel [H, D, E]       layers_{i}/mlp/{gate,up,down}_proj/kernel
  norm/scale [E]                                     lm_head/kernel [E, V] (absent when embeddings are tied)

With `scan_layers` the layers are one `nn.scan`: `layers/...` holds every layer parameter stacked [L, ...] (logical
axis 'layers'); `stack_layers` / `unstack_layers` convert between the two trees, HF files use the unstacked one.
"""
import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax.typing import DTypeLike

from mmjax.models.kv_cache import KVCache, write_chunk
from mmjax.nn.contractions import contract_trailing
from mmjax.nn.linear import Dense
from mmjax.nn.mlp import SwiGLU
from mmjax.nn.multihead_attention import ATTENTION_OUTPUT, MultiHeadAttention
from mmjax.nn.norms import RMSNorm
from mmjax.nn.rope import RopeScaling

INIT = nn.initializers.normal(0.02)  # HF initializer_range of Qwen2 and Llama
# Chunks of at most this many tokens over a contiguous cache attend by lengths (the decode kernel's Tq limit).
MAX_LENGTHS_CHUNK = 8
# What a layer keeps for the backward pass under each `remat_policy` ('none': everything, no rematerialisation).
REMAT_POLICIES = {
    'full': jax.checkpoint_policies.nothing_saveable,
    'save_dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # projection and MLP matmul outputs
    'save_attention': jax.checkpoint_policies.save_only_these_names(ATTENTION_OUTPUT),
}


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """What changes the computation of a family member (SiLU MLP, full attention, head_dim = hidden / heads).

  attention_bias: q/k/v projections with bias (Qwen2) or without (Llama). rope_scaling: None for plain RoPE.
  scan_layers: run the layers as one `nn.scan` over parameters stacked [L, ...] under `layers` (compile time
    independent of depth) instead of `layers_{i}`; not part of the HF config (see `stack_layers`).
  """
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: int
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  max_position_embeddings: int = 2048
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  rope_scaling: RopeScaling | None = None
  scan_layers: bool = False

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f'hidden_size {self.hidden_size} is not divisible by num_attention_heads '
                       f'{self.num_attention_heads}.')
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(f'num_attention_heads {self.num_attention_heads} is not a multiple of num_key_value_heads '
                       f'{self.num_key_value_heads}.')

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads


def hf_fields(config: DecoderConfig) -> dict[str, Any]:
  """The HF config.json entries of `config` shared by the family (sizes, norm, RoPE theta, embeddings)."""
  names = ('vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads',
           'num_key_value_heads', 'rms_norm_eps', 'rope_theta', 'max_position_embeddings', 'tie_word_embeddings')
  return {name: getattr(config, name) for name in names}


def read_hf_dict(d: Mapping[str, Any], family: str, defaults: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
  """The family's fields of an HF config.json dict, and the problems that this family cannot run.

  Reads transformers 4.x (`rope_theta`, `rope_scaling`) and 5.x (`rope_parameters`); `defaults` fill the
  optional fields. Raises ValueError for missing sizes. A problem is a phrase naming the unsupported setting
  (a non-SiLU MLP, a custom head_dim, an unknown RoPE type).
  """
  sizes = ('vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads')
  missing = [k for k in sizes if k not in d]
  if missing:
    raise ValueError(f'{family} config.json lacks {missing}.')
  rope = {**(d.get('rope_scaling') or {}), **(d.get('rope_parameters') or {})}
  rope_type = rope.get('rope_type', rope.get('type', 'default'))
  problems = []
  if d.get('hidden_act', 'silu') != 'silu':
    problems.append(f'hidden_act={d["hidden_act"]!r} (only silu)')
  head_dim = d['hidden_size'] // d['num_attention_heads']
  if d.get('head_dim') not in (None, head_dim):
    problems.append(f'head_dim={d["head_dim"]} != hidden_size / num_attention_heads = {head_dim}')
  scaling = None
  if rope_type == 'linear':
    scaling = RopeScaling('linear', factor=float(rope['factor']))
  elif rope_type == 'llama3':
    scaling = RopeScaling('llama3', factor=float(rope['factor']), low_freq_factor=float(rope['low_freq_factor']),
                          high_freq_factor=float(rope['high_freq_factor']),
                          original_max_position_embeddings=int(rope['original_max_position_embeddings']))
  elif rope_type != 'default':
    problems.append(f'rope type {rope_type!r} (default, linear or llama3)')
  fields = {k: d[k] for k in sizes}
  fields.update(
      num_key_value_heads=d.get('num_key_value_heads') or d['num_attention_heads'],
      rms_norm_eps=d.get('rms_norm_eps', defaults['rms_norm_eps']),
      # transformers' default when a config names no theta is 10000, whatever the family's checkpoints use.
      rope_theta=float(rope.get('rope_theta', d.get('rope_theta', 10000.0))),
      max_position_embeddings=d.get('max_position_embeddings', defaults['max_position_embeddings']),
      tie_word_embeddings=d.get('tie_word_embeddings', False), rope_scaling=scaling)
  return fields, problems


def hf_rope_parameters(config: DecoderConfig) -> dict[str, Any]:
  """HF `rope_parameters` (transformers 5.x; 4.x reads the same dict as `rope_scaling`) of `config`."""
  scaling = config.rope_scaling
  if scaling is None or scaling.rope_type == 'default':
    return {'rope_type': 'default', 'rope_theta': config.rope_theta}
  if scaling.rope_type == 'linear':
    return {'rope_type': 'linear', 'rope_theta': config.rope_theta, 'factor': scaling.factor}
  return {'rope_type': 'llama3', 'rope_theta': config.rope_theta, 'factor': scaling.factor,
          'low_freq_factor': scaling.low_freq_factor, 'high_freq_factor': scaling.high_freq_factor,
          'original_max_position_embeddings': scaling.original_max_position_embeddings}


def stack_layers(params: Mapping[str, Any]) -> dict[str, Any]:
  """An unscanned parameter tree of arrays (`nn.unbox` a boxed one) -> the scanned one (`layers`, stacked [L, ...])."""
  names = sorted((k for k in params if re.fullmatch(r'layers_\d+', k)), key=lambda k: int(k.split('_')[1]))
  if not names:
    raise ValueError(f'no layers_{{i}} in the parameters (top-level keys {sorted(params)}); already stacked?')
  rest = {k: v for k, v in params.items() if k not in names}
  return {**rest, 'layers': jax.tree.map(lambda *xs: jnp.stack(xs), *(params[k] for k in names))}


def unstack_layers(params: Mapping[str, Any]) -> dict[str, Any]:
  """The scanned parameter tree (`layers` [L, ...]) -> the unscanned one (layers_{i}), as HF names them."""
  if 'layers' not in params:
    raise ValueError(f'no stacked `layers` in the parameters (top-level keys {sorted(params)}); not scanned?')
  stacked = params['layers']
  count = jax.tree.leaves(stacked)[0].shape[0]
  rest = {k: v for k, v in params.items() if k != 'layers'}
  return {**rest, **{f'layers_{i}': jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(count)}}


def segment_positions(segment_ids: jax.Array) -> jax.Array:
  """Each token's index within its run of equal segment ids: int [B, S] -> int32 [B, S] (RoPE restarts per
  packed document)."""
  index = jnp.arange(segment_ids.shape[1], dtype=jnp.int32)
  starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1)
  return index - jax.lax.cummax(jnp.where(starts, index, 0), axis=1)


@flax.struct.dataclass
class CausalLMOutput:
  """logits: float32 [B, S, V]. cache: the updated KVCache when one was passed, else None."""
  logits: jax.Array
  cache: KVCache | None = None


class DecoderLayer(nn.Module):
  """x + attn(input_layernorm(x)), then + mlp(post_attention_layernorm(.)); [B, S, E] -> [B, S, E]."""
  config: DecoderConfig
  attn_impl: str = 'auto'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array | None,
               kv: tuple[jax.Array, jax.Array] | None = None, lengths: jax.Array | None = None,
               kv_lengths: jax.Array | None = None, segment_ids: jax.Array | None = None,
               layer: jax.Array | None = None) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """Without kv: causal attention within x (positions int [B, S]), AND mask (broadcastable to [B, 1, S, S]),
    AND within the same segment of segment_ids int [B, S] (0 = padding, attends to nothing).

    With kv = (keys, values) [B, T, Hkv, D]: writes this chunk at slots lengths [B], attends over all T slots
    with mask [B, 1, S, T] (which carries causality), and returns the updated (keys, values). Instead of the
    mask, kv_lengths [B] (= lengths + S over a contiguous cache) attends to slots [0, kv_lengths), causally.
    With `layer` (an int index), kv is the stacked cache [L, B, T, Hkv, D] of every layer: the chunk is written
    into layer `layer` in place and the whole updated stack is returned.
    Returns (x, updated (keys, values) or None).
    """
    cfg = self.config
    norm = functools.partial(RMSNorm, eps=cfg.rms_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
    written = []

    def write_cache(k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
      written.append((write_chunk(kv[0], k, lengths, layer), write_chunk(kv[1], v, lengths, layer)))
      if layer is None:
        return written[0]
      return tuple(jax.lax.dynamic_index_in_dim(buffer, layer, keepdims=False) for buffer in written[0])

    attention = MultiHeadAttention(
        cfg.num_attention_heads, cfg.head_dim, cfg.num_key_value_heads, qkv_bias=cfg.attention_bias,
        out_bias=False, rope_theta=cfg.rope_theta, rope_scaling=cfg.rope_scaling, attn_impl=self.attn_impl,
        dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=INIT, name='self_attn')
    h = attention(norm(name='input_layernorm')(x), causal=kv is None or kv_lengths is not None, mask=mask,
                  segment_ids=segment_ids, positions=positions, kv_hook=None if kv is None else write_cache,
                  kv_lengths=kv_lengths)
    x = nn.with_logical_constraint(x + h, ('batch', 'length', 'embed'))
    h = SwiGLU(cfg.intermediate_size, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=INIT,
               name='mlp')(norm(name='post_attention_layernorm')(x))
    return nn.with_logical_constraint(x + h, ('batch', 'length', 'embed')), written[0] if written else None


class ScannedDecoderLayer(DecoderLayer):
  """The body of `nn.scan` over the layers: carries (x, the stacked cache or None) and takes its layer index."""

  def __call__(self, carry: tuple[jax.Array, tuple[jax.Array, jax.Array] | None], layer: jax.Array,
               positions: jax.Array, mask: jax.Array | None, lengths: jax.Array | None,
               kv_lengths: jax.Array | None, segment_ids: jax.Array | None
               ) -> tuple[tuple[jax.Array, tuple[jax.Array, jax.Array] | None], None]:
    x, kv = carry
    x, kv = super().__call__(x, positions, mask, kv, lengths, kv_lengths, segment_ids,
                             layer=None if kv is None else layer)
    return (x, kv), None


class DecoderForCausalLM(nn.Module):
  """Token ids or embeddings -> next-token logits, optionally reading and extending a KV cache.

  dtype is the compute dtype (None: the parameter dtype), param_dtype the storage dtype. attn_impl is passed to
  `dot_product_attention`. remat_policy says what each layer keeps for the backward pass and recomputes: 'none'
  (keep everything), 'full' (recompute the layer), 'save_dots' (keep the matmul outputs of the projections and
  the MLP, recompute the rest), 'save_attention' (keep the attention output, recompute the rest).
  """
  config: DecoderConfig
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32
  attn_impl: str = 'auto'
  remat_policy: str = 'none'

  def setup(self):
    cfg = self.config
    self.embed_tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                                 embedding_init=nn.with_logical_partitioning(INIT, ('vocab', 'embed')))
    policy = self.remat_policy
    if policy != 'none' and policy not in REMAT_POLICIES:
      raise ValueError(f'unknown remat_policy {policy!r}; choose one of {["none", *REMAT_POLICIES]}.')
    def layer_class(cls: type[DecoderLayer]) -> type[DecoderLayer]:
      return cls if policy == 'none' else nn.remat(cls, policy=REMAT_POLICIES[policy])

    if cfg.scan_layers:
      # The carry is (x, the stacked cache); the layer index is scanned over, everything else is shared.
      scanned = nn.scan(layer_class(ScannedDecoderLayer), variable_axes={'params': 0}, split_rngs={'params': True},
                        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                        length=cfg.num_hidden_layers, metadata_params={nn.PARTITION_NAME: 'layers'})
      self.layers = scanned(cfg, self.attn_impl, self.dtype, self.param_dtype)
    else:
      self.layers = [layer_class(DecoderLayer)(cfg, self.attn_impl, self.dtype, self.param_dtype)
                     for _ in range(cfg.num_hidden_layers)]
    self.norm = RMSNorm(eps=cfg.rms_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
    if not cfg.tie_word_embeddings:
      self.lm_head = Dense(cfg.vocab_size, ('embed', 'vocab'), use_bias=False, dtype=self.dtype,
                           param_dtype=self.param_dtype, kernel_init=INIT)

  def embed(self, input_ids: jax.Array) -> jax.Array:
    """Token embeddings: int input_ids [B, S] -> [B, S, E]."""
    return nn.with_logical_constraint(self.embed_tokens(input_ids), ('batch', 'length', 'embed'))

  def __call__(self, input_ids: jax.Array | None = None, *, inputs_embeds: jax.Array | None = None,
               attention_mask: jax.Array | None = None, positions: jax.Array | None = None,
               cache: KVCache | None = None, logits_at: jax.Array | None = None,
               segment_ids: jax.Array | None = None) -> CausalLMOutput:
    """Runs the decoder on one chunk of S tokens per row.

    Args:
      input_ids: int [B, S]; exactly one of input_ids and inputs_embeds [B, S, E] is given.
      attention_mask: [B, S], 1 = real token, 0 = padding (left or right); default all real. Padding keys are
        never attended to; logits at padding positions are meaningless. Without a cache the padding travels to
        attention as segment ids (real = 1, padding = 0), which the fused kernels serve on GPU/TPU.
      positions: int [B, S] RoPE positions; default cumsum(attention_mask) - 1 clipped at 0, counting the real
        tokens already in the cache (HF generation semantics, so left padding does not shift positions), or with
        segment_ids the index of each token within its segment.
      segment_ids: int [B, S] packed documents (training, no cache): a token attends causally to the tokens of
        its own segment only; 0 marks padding (as attention_mask = 0 does).
      cache: a KVCache from `mmjax.models.kv_cache.init_cache`. The chunk is appended at each row's `lengths`
        and attends to every valid cached slot before it (see kv_cache.py). Without it, attention is causal
        within the chunk.
      logits_at: int [B, K] chunk indices whose logits to compute (e.g. each prompt's last token in a prefill,
        which skips the [B, S, V] unembedding); default all S.

    Returns:
      CausalLMOutput(logits float32 [B, S, V] (or [B, K, V] with logits_at), cache: the updated KVCache, or
      None without a cache).
    """
    if (input_ids is None) == (inputs_embeds is None):
      raise ValueError('Pass exactly one of input_ids and inputs_embeds.')
    x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
    self._check_shapes(x, attention_mask, positions, segment_ids, cache)
    batch, length = x.shape[:2]
    real = jnp.ones((batch, length), bool) if attention_mask is None else attention_mask.astype(bool)
    if cache is None:
      mask = None
      if positions is None:
        positions = (jnp.maximum(jnp.cumsum(real.astype(jnp.int32), axis=1) - 1, 0) if segment_ids is None
                     else segment_positions(segment_ids))
      if segment_ids is not None:
        segment_ids = jnp.where(real, segment_ids.astype(jnp.int32), 0)
      elif attention_mask is not None:
        segment_ids = real.astype(jnp.int32)
    else:
      if segment_ids is not None:
        raise ValueError('segment_ids (packed documents) are for training without a cache; with a cache pass '
                         'attention_mask.')
      # A few unpadded tokens appended to a contiguous cache attend by lengths: on GPU/TPU the decode kernel.
      by_lengths = cache.contiguous and attention_mask is None and length <= MAX_LENGTHS_CHUNK
      mask = None if by_lengths else cache.attention_mask(real)
      if positions is None:
        positions = cache.positions(real)
    kv_lengths = cache.lengths + length if cache is not None and mask is None else None
    x, keys, values = self._layers(x, positions, mask, cache, kv_lengths, segment_ids)
    if logits_at is not None:
      x = jnp.take_along_axis(x, logits_at[:, :, None].astype(jnp.int32), axis=1)
    x = self.norm(x)
    if self.config.tie_word_embeddings:
      # x [B, S, E] . embedding [V, E] over E, as one contraction: nn.Embed.attend's x @ embedding.T lets XLA:CPU
      # materialise the [E, V] transpose (a copy of the whole table) in every decode step.
      x, table = promote_dtype(x, self.embed_tokens.embedding, dtype=self.dtype)
      logits = contract_trailing(x, table, 1, features_first=True)
    else:
      logits = self.lm_head(x)
    logits = nn.with_logical_constraint(logits.astype(jnp.float32), ('batch', 'length', 'vocab'))
    if cache is not None:
      cache = cache.update(keys, values, real).replace(contiguous=cache.contiguous and attention_mask is None)
    return CausalLMOutput(logits=logits, cache=cache)

  def _layers(self, x: jax.Array, positions: jax.Array, mask: jax.Array | None, cache: KVCache | None,
              kv_lengths: jax.Array | None, segment_ids: jax.Array | None = None
              ) -> tuple[jax.Array, list[jax.Array] | jax.Array, list[jax.Array] | jax.Array]:
    """Runs every layer; returns (x, the updated keys and values in the cache's layout: stacked [L, B, T, Hkv, D]
    for scanned layers, one [B, T, Hkv, D] per layer otherwise; empty lists without a cache)."""
    scanned = self.config.scan_layers
    if cache is not None and cache.stacked != scanned:
      raise ValueError(f'a cache with {"stacked" if cache.stacked else "per-layer"} keys and values does not fit a '
                       f'model with scan_layers={scanned}; build it with init_cache(model.config, ...).')
    lengths = None if cache is None else cache.lengths
    if scanned:
      # The stacked buffers ride in the carry: each layer writes its chunk in place, nothing is re-stacked.
      kv = None if cache is None else (cache.keys, cache.values)
      layer_index = jnp.arange(self.config.num_hidden_layers, dtype=jnp.int32)
      (x, new_kv), _ = self.layers((x, kv), layer_index, positions, mask, lengths, kv_lengths, segment_ids)
      return (x, [], []) if new_kv is None else (x, *new_kv)
    keys, values = [], []
    for i, layer in enumerate(self.layers):
      kv = None if cache is None else (cache.keys[i], cache.values[i])
      x, new_kv = layer(x, positions, mask, kv, lengths, kv_lengths, segment_ids)
      if new_kv is not None:
        keys.append(new_kv[0])
        values.append(new_kv[1])
    return x, keys, values

  def _check_shapes(self, x: jax.Array, attention_mask: jax.Array | None, positions: jax.Array | None,
                    segment_ids: jax.Array | None, cache: KVCache | None) -> None:
    """Raises ValueError when the inputs disagree with each other or with the config."""
    cfg = self.config
    if x.ndim != 3 or x.shape[-1] != cfg.hidden_size:
      raise ValueError(f'inputs must be input_ids [B, S] or inputs_embeds [B, S, {cfg.hidden_size}], '
                       f'got embeddings of shape {x.shape}.')
    for name, value in (('attention_mask', attention_mask), ('positions', positions), ('segment_ids', segment_ids)):
      if value is not None and value.shape != x.shape[:2]:
        raise ValueError(f'{name} must be [B, S] = {list(x.shape[:2])}, got {value.shape}.')
    if cache is not None:
      expected = (x.shape[0], cache.max_len, cfg.num_key_value_heads, cfg.head_dim)
      if len(cache.keys) != cfg.num_hidden_layers or cache.keys[0].shape != expected:
        raise ValueError(f'cache holds {len(cache.keys)} layers of {cache.keys[0].shape}; this model needs '
                         f'{cfg.num_hidden_layers} layers of {expected}.')
      if x.shape[1] > cache.max_len:
        raise ValueError(f'a chunk of {x.shape[1]} tokens does not fit a cache of max_len {cache.max_len}.')
