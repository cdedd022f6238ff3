"""The IP-Adapter+ Perceiver resampler and IPAdapter-Instruct's ResamplerInstructBigger.

`Resampler(config).apply({'params': p}, image_tokens [B, N, E], instruction [B, Li, T], prompt [B, Lp, T])` ->
IP tokens [B, Q, output_dim]: Q learned latents cross-attend (Perceiver attention: keys and values over the
inputs and the latents together) to the projected image tokens (`depth` x [attention, FF x ff_mult]); with
config.instruct every layer then attends, the same way, to the projected prompt tokens and to the projected
instruction tokens (each followed by an FF x 2), all residual; proj_out and a LayerNorm end it. Without instruct
(IP-Adapter+) the text inputs are not taken.
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmjax.nn.attention import dot_product_attention
from mmjax.nn.linear import Dense
from mmjax.nn.norms import LayerNorm

_LAYER_NORM_EPS = 1e-5  # torch's default
_TEXT_FF_MULT = 2  # the prompt and instruction paths' feed-forwards


@dataclasses.dataclass(frozen=True)
class ResamplerConfig:
  """Defaults are SD1.5's ResamplerInstructBigger (instruct=False: the ip-adapter-plus_sd15 resampler).

  dim: width of the latents; heads x dim_head: attention width; num_queries: IP tokens out;
  embedding_dim: the image encoder's hidden size (its penultimate hidden states are the image tokens);
  output_dim: the UNet's cross_attention_dim; text_dim: the text encoder's hidden size (instruction and prompt).
  """
  dim: int = 768
  depth: int = 4
  dim_head: int = 64
  heads: int = 12
  num_queries: int = 16
  embedding_dim: int = 1280
  output_dim: int = 768
  ff_mult: int = 4
  instruct: bool = True
  text_dim: int = 768


class FeedForward(nn.Module):
  """LayerNorm -> Linear(d -> mult·d, no bias) -> exact GELU -> Linear(no bias): [B, Q, d] -> [B, Q, d]."""
  mult: int
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = functools.partial(Dense, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
    dim = x.shape[-1]
    h = LayerNorm(eps=_LAYER_NORM_EPS, dtype=self.dtype, param_dtype=self.param_dtype, name='norm')(x)
    h = jax.nn.gelu(dense(dim * self.mult, ('embed', 'mlp'), name='fc1')(h), approximate=False)
    return dense(dim, ('mlp', 'embed'), name='fc2')(h)


class PerceiverAttention(nn.Module):
  """Latents [B, Q, d] attend to [LN(x) ‖ LN(latents)] ([B, N + Q, d]) with logits q·k / sqrt(dim_head) (the
  official code scales q and k by dim_head^-1/4 each, for float16; our logits are float32); no biases. Returns
  [B, Q, d] (the caller adds the residual)."""
  heads: int
  dim_head: int
  attn_impl: str = 'auto'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, latents: jax.Array) -> jax.Array:
    dense = functools.partial(Dense, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
    norm = functools.partial(LayerNorm, eps=_LAYER_NORM_EPS, dtype=self.dtype, param_dtype=self.param_dtype)
    x, latents = norm(name='norm1')(x), norm(name='norm2')(latents)
    inner = self.heads * self.dim_head
    q = dense(inner, ('embed', 'heads'), name='to_q')(latents)
    k, v = jnp.split(dense(2 * inner, ('embed', 'heads'), name='to_kv')(jnp.concatenate([x, latents], axis=1)), 2,
                     axis=-1)
    split = lambda t: t.reshape(t.shape[:2] + (self.heads, self.dim_head))  # noqa: E731
    out = dot_product_attention(split(q), split(k), split(v), impl=self.attn_impl).reshape(q.shape)
    return dense(latents.shape[-1], ('heads', 'embed'), name='to_out')(out)


class Resampler(nn.Module):
  """image_tokens [B, N, embedding_dim] (+ instruction, prompt [B, L, text_dim] when config.instruct) -> IP tokens
  [B, num_queries, output_dim]."""
  config: ResamplerConfig
  attn_impl: str = 'auto'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, image_tokens: jax.Array, instruction: jax.Array | None = None,
               prompt: jax.Array | None = None) -> jax.Array:
    cfg = self.config
    if cfg.instruct and (instruction is None or prompt is None):
      raise ValueError('the instruct resampler needs image_tokens, instruction and prompt tokens.')
    if not cfg.instruct and (instruction is not None or prompt is not None):
      raise ValueError('the IP-Adapter+ resampler (instruct=False) takes image tokens only.')
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    latents = self.param('latents', nn.with_logical_partitioning(nn.initializers.normal(cfg.dim ** -0.5),
                                                                 (None, 'length', 'embed')),
                         (1, cfg.num_queries, cfg.dim), self.param_dtype)
    latents = jnp.broadcast_to(latents, (image_tokens.shape[0],) + latents.shape[1:]).astype(self.dtype or
                                                                                             latents.dtype)
    attention = functools.partial(PerceiverAttention, cfg.heads, cfg.dim_head, self.attn_impl, **kw)
    x = Dense(cfg.dim, ('embed', 'mlp'), **kw, name='proj_in')(image_tokens)
    if cfg.instruct:
      prompt = Dense(cfg.dim, ('embed', 'mlp'), **kw, name='proj_prompt_input')(prompt)
      instruction = Dense(cfg.dim, ('embed', 'mlp'), **kw, name='proj_new_input')(instruction)
    for i in range(cfg.depth):
      latents = latents + attention(name=f'layers_{i}_attn')(x, latents)
      latents = latents + FeedForward(cfg.ff_mult, **kw, name=f'layers_{i}_ff')(latents)
      if cfg.instruct:
        latents = latents + attention(name=f'prompt_layers_{i}_attn')(prompt, latents)
        latents = latents + FeedForward(_TEXT_FF_MULT, **kw, name=f'prompt_layers_{i}_ff')(latents)
        latents = latents + attention(name=f'instruct_layers_{i}_attn')(instruction, latents)
        latents = latents + FeedForward(_TEXT_FF_MULT, **kw, name=f'instruct_layers_{i}_ff')(latents)
    latents = Dense(cfg.output_dim, ('embed', 'mlp'), **kw, name='proj_out')(latents)
    return LayerNorm(eps=_LAYER_NORM_EPS, **kw, name='norm_out')(latents)
