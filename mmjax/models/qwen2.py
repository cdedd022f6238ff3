"""Qwen2 decoder-only language model (HF `Qwen2ForCausalLM`), with an explicit KV cache for decoding.

Pre-RMSNorm blocks, grouped-query attention with q/k/v bias (no o_proj bias), RoPE rotate-half in float32, SwiGLU
MLP, and optionally tied input/output embeddings. Parameter tree (kernels in the layouts of `mmjax.nn`):

  embed_tokens/embedding [V, E]                      layers_{i}/input_layernorm/scale [E]
  layers_{i}/self_attn/{q,k,v}_proj/{kernel, bias}   layers_{i}/post_attention_layernorm/scale [E]
  layers_{i}/self_attn/o_proj/kernel [H, D, E]       layers_{i}/mlp/{gate,up,down}_proj/kernel
  norm/scale [E]                                     lm_head/kernel [E, V] (absent when embeddings are tied)
"""
import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax.typing import DTypeLike

from mmjax.models.kv_cache import KVCache, write_chunk
from mmjax.nn.attention import dot_product_attention
from mmjax.nn.contractions import contract_trailing
from mmjax.nn.linear import Dense, DenseGeneral
from mmjax.nn.mlp import SwiGLU
from mmjax.nn.norms import RMSNorm
from mmjax.nn.rope import apply_rope

_HF_SIZE_KEYS = ('vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads')
_INIT = nn.initializers.normal(0.02)  # HF Qwen2 initializer_range
# Chunks of at most this many tokens over a contiguous cache attend by lengths (the decode kernel's Tq limit).
MAX_LENGTHS_CHUNK = 8


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
  """The fields of HF `Qwen2Config` that change the computation (standard RoPE, full attention, SiLU)."""
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: int
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1e6
  max_position_embeddings: int = 32768
  tie_word_embeddings: bool = False

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

  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any]) -> 'Qwen2Config':
    """Reads an HF config.json dict (transformers 4.x `rope_theta` or 5.x `rope_parameters`).

    Raises ValueError for required fields that are missing and for variants this module does not implement
    (sliding-window attention, scaled RoPE, a non-SiLU MLP, a custom head_dim).
    """
    missing = [k for k in _HF_SIZE_KEYS if k not in d]
    if missing:
      raise ValueError(f'Qwen2 config.json lacks {missing}.')
    rope = dict(d.get('rope_parameters') or {})
    rope_type = rope.get('rope_type', rope.get('type', 'default'))
    problems = []
    if d.get('hidden_act', 'silu') != 'silu':
      problems.append(f'hidden_act={d["hidden_act"]!r} (only silu)')
    if d.get('use_sliding_window'):
      problems.append('use_sliding_window=true')
    if rope_type != 'default' or d.get('rope_scaling'):
      problems.append(f'rope type {rope_type!r} / rope_scaling={d.get("rope_scaling")!r} (only default RoPE)')
    head_dim = d['hidden_size'] // d['num_attention_heads']
    if d.get('head_dim', head_dim) != head_dim:
      problems.append(f'head_dim={d["head_dim"]} != hidden_size / num_attention_heads = {head_dim}')
    if problems:
      raise ValueError(f'Unsupported Qwen2 config: {"; ".join(problems)}.')
    return cls(
        vocab_size=d['vocab_size'], hidden_size=d['hidden_size'], intermediate_size=d['intermediate_size'],
        num_hidden_layers=d['num_hidden_layers'], num_attention_heads=d['num_attention_heads'],
        num_key_value_heads=d.get('num_key_value_heads') or d['num_attention_heads'],
        rms_norm_eps=d.get('rms_norm_eps', 1e-6),
        # transformers' default when a config names no theta is 10000, not Qwen2's 1e6.
        rope_theta=float(rope.get('rope_theta', d.get('rope_theta', 10000.0))),
        max_position_embeddings=d.get('max_position_embeddings', 32768),
        tie_word_embeddings=d.get('tie_word_embeddings', False))

  def to_hf_dict(self) -> dict[str, Any]:
    """An HF config.json dict that transformers 4.x (rope_theta) and 5.x (rope_parameters) both read."""
    d = dataclasses.asdict(self)
    return {'model_type': 'qwen2', 'architectures': ['Qwen2ForCausalLM'], **d, 'hidden_act': 'silu',
            'use_sliding_window': False, 'rope_parameters': {'rope_type': 'default', 'rope_theta': self.rope_theta}}


@flax.struct.dataclass
class CausalLMOutput:
  """logits: float32 [B, S, V]. cache: the updated KVCache when one was passed, else None."""
  logits: jax.Array
  cache: KVCache | None = None


class Qwen2Attention(nn.Module):
  """GQA self-attention with RoPE, attending over the chunk itself or over a KV cache; [B,S,E] -> [B,S,E]."""
  config: Qwen2Config
  attn_impl: str = 'auto'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array | None,
               kv: tuple[jax.Array, jax.Array] | None = None, lengths: jax.Array | None = None,
               kv_lengths: jax.Array | None = None) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """Without kv: causal attention within x, AND mask (broadcastable to [B, 1, S, S]).

    With kv = (keys, values) [B, T, Hkv, D]: writes this chunk at slots lengths [B], attends over all T slots
    with mask [B, 1, S, T] (which carries causality), and returns the updated (keys, values). Instead of the
    mask, kv_lengths [B] (= lengths + S over a contiguous cache) attends to slots [0, kv_lengths), causally.
    """
    cfg = self.config
    dense = functools.partial(DenseGeneral, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=_INIT)
    q = dense((cfg.num_attention_heads, cfg.head_dim), ('embed', 'heads', 'head_dim'), name='q_proj')(x)
    kv_shape, kv_axes = (cfg.num_key_value_heads, cfg.head_dim), ('embed', 'kv_heads', 'head_dim')
    k = dense(kv_shape, kv_axes, name='k_proj')(x)
    v = dense(kv_shape, kv_axes, name='v_proj')(x)
    q = nn.with_logical_constraint(apply_rope(q, positions, theta=cfg.rope_theta),
                                   ('batch', 'length', 'heads', 'head_dim'))
    k = apply_rope(k, positions, theta=cfg.rope_theta)
    if kv is None:
      new_kv = None
    else:
      k, v = write_chunk(kv[0], k, lengths), write_chunk(kv[1], v, lengths)
      new_kv = (k, v)
    k = nn.with_logical_constraint(k, ('batch', 'length', 'kv_heads', 'head_dim'))
    v = nn.with_logical_constraint(v, ('batch', 'length', 'kv_heads', 'head_dim'))
    out = dot_product_attention(q, k, v, causal=kv is None or kv_lengths is not None, mask=mask,
                                impl=self.attn_impl, kv_lengths=kv_lengths)
    out = nn.with_logical_constraint(out, ('batch', 'length', 'heads', 'head_dim'))
    out = dense(cfg.hidden_size, ('heads', 'head_dim', 'embed'), axis=(-2, -1), use_bias=False, name='o_proj')(out)
    return out, new_kv


class Qwen2DecoderLayer(nn.Module):
  """x + attn(input_layernorm(x)), then + mlp(post_attention_layernorm(.)); [B, S, E] -> [B, S, E]."""
  config: Qwen2Config
  attn_impl: str = 'auto'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array | None,
               kv: tuple[jax.Array, jax.Array] | None = None, lengths: jax.Array | None = None,
               kv_lengths: jax.Array | None = None) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """Arguments as in `Qwen2Attention`; returns (x, updated (keys, values) or None)."""
    cfg = self.config
    norm = functools.partial(RMSNorm, eps=cfg.rms_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
    h, new_kv = Qwen2Attention(cfg, self.attn_impl, self.dtype, self.param_dtype, name='self_attn')(
        norm(name='input_layernorm')(x), positions, mask, kv, lengths, kv_lengths)
    x = nn.with_logical_constraint(x + h, ('batch', 'length', 'embed'))
    h = SwiGLU(cfg.intermediate_size, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=_INIT,
               name='mlp')(norm(name='post_attention_layernorm')(x))
    return nn.with_logical_constraint(x + h, ('batch', 'length', 'embed')), new_kv


class Qwen2ForCausalLM(nn.Module):
  """Token ids or embeddings -> next-token logits, optionally reading and extending a KV cache.

  dtype is the compute dtype (None: the parameter dtype), param_dtype the storage dtype. remat=True recomputes
  each decoder layer's activations in the backward pass. attn_impl is passed to `dot_product_attention`.
  """
  config: Qwen2Config
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32
  remat: bool = False
  attn_impl: str = 'auto'

  def setup(self):
    cfg = self.config
    self.embed_tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                                 embedding_init=nn.with_logical_partitioning(_INIT, ('vocab', 'embed')))
    layer_cls = nn.remat(Qwen2DecoderLayer) if self.remat else Qwen2DecoderLayer
    self.layers = [layer_cls(cfg, self.attn_impl, self.dtype, self.param_dtype)
                   for _ in range(cfg.num_hidden_layers)]
    self.norm = RMSNorm(eps=cfg.rms_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
    if not cfg.tie_word_embeddings:
      self.lm_head = Dense(cfg.vocab_size, ('embed', 'vocab'), use_bias=False, dtype=self.dtype,
                           param_dtype=self.param_dtype, kernel_init=_INIT)

  def embed(self, input_ids: jax.Array) -> jax.Array:
    """Token embeddings: int input_ids [B, S] -> [B, S, E]."""
    return nn.with_logical_constraint(self.embed_tokens(input_ids), ('batch', 'length', 'embed'))

  def __call__(self, input_ids: jax.Array | None = None, *, inputs_embeds: jax.Array | None = None,
               attention_mask: jax.Array | None = None, positions: jax.Array | None = None,
               cache: KVCache | None = None, logits_at: jax.Array | None = None) -> CausalLMOutput:
    """Runs the decoder on one chunk of S tokens per row.

    Args:
      input_ids: int [B, S]; exactly one of input_ids and inputs_embeds [B, S, E] is given.
      attention_mask: [B, S], 1 = real token, 0 = padding (left or right); default all real. Padding keys are
        never attended to; logits at padding positions are meaningless.
      positions: int [B, S] RoPE positions; default cumsum(attention_mask) - 1 clipped at 0, counting the real
        tokens already in the cache (HF generation semantics, so left padding does not shift positions).
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
    self._check_shapes(x, attention_mask, positions, cache)
    batch, length = x.shape[:2]
    real = jnp.ones((batch, length), bool) if attention_mask is None else attention_mask.astype(bool)
    if cache is None:
      mask = None if attention_mask is None else real[:, None, None, :]
      if positions is None:
        positions = jnp.maximum(jnp.cumsum(real.astype(jnp.int32), axis=1) - 1, 0)
    else:
      # A few unpadded tokens appended to a contiguous cache attend by lengths: on GPU/TPU the decode kernel.
      by_lengths = cache.contiguous and attention_mask is None and length <= MAX_LENGTHS_CHUNK
      mask = None if by_lengths else cache.attention_mask(real)
      if positions is None:
        positions = cache.positions(real)
    kv_lengths = cache.lengths + length if cache is not None and mask is None else None
    keys, values = [], []
    for i, layer in enumerate(self.layers):
      kv = None if cache is None else (cache.keys[i], cache.values[i])
      x, new_kv = layer(x, positions, mask, kv, None if cache is None else cache.lengths, kv_lengths)
      if new_kv is not None:
        keys.append(new_kv[0])
        values.append(new_kv[1])
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

  def _check_shapes(self, x: jax.Array, attention_mask: jax.Array | None, positions: jax.Array | None,
                    cache: KVCache | None) -> None:
    """Raises ValueError when the inputs disagree with each other or with the config."""
    cfg = self.config
    if x.ndim != 3 or x.shape[-1] != cfg.hidden_size:
      raise ValueError(f'inputs must be input_ids [B, S] or inputs_embeds [B, S, {cfg.hidden_size}], '
                       f'got embeddings of shape {x.shape}.')
    for name, value in (('attention_mask', attention_mask), ('positions', positions)):
      if value is not None and value.shape != x.shape[:2]:
        raise ValueError(f'{name} must be [B, S] = {list(x.shape[:2])}, got {value.shape}.')
    if cache is not None:
      expected = (x.shape[0], cache.max_len, cfg.num_key_value_heads, cfg.head_dim)
      if len(cache.keys) != cfg.num_hidden_layers or cache.keys[0].shape != expected:
        raise ValueError(f'cache holds {len(cache.keys)} layers of {cache.keys[0].shape}; this model needs '
                         f'{cfg.num_hidden_layers} layers of {expected}.')
      if x.shape[1] > cache.max_len:
        raise ValueError(f'a chunk of {x.shape[1]} tokens does not fit a cache of max_len {cache.max_len}.')
