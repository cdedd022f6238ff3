"""Multi-head (and grouped-query) attention layer: q/k/v/o projections around `dot_product_attention`."""
import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.nn.initializers import Initializer
from jax.typing import DTypeLike

from mmjax.nn.attention import SegmentIds, dot_product_attention
from mmjax.nn.linear import DenseGeneral, default_kernel_init
from mmjax.nn.rope import RopeScaling, apply_rope

# The KV-cache hook: the chunk's keys (after RoPE) and values [B, S, Hkv, D] -> the keys and values to attend to
# [B, T, Hkv, D], e.g. a cache's buffers with the chunk written in.
# The name of the attention output (before o_proj) for remat policies that save it instead of recomputing it.
ATTENTION_OUTPUT = 'attention_output'
KVHook = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


class MultiHeadAttention(nn.Module):
  """x [B, Sq, E] attending to kv [B, Sk, E] (x itself when kv is None) -> [B, Sq, out_features or E].

  Parameters follow HF naming: q_proj kernel [E, H, D] ('embed', 'heads', 'head_dim'), k_proj and v_proj
  [E, Hkv, D] ('embed', 'kv_heads', 'head_dim'), o_proj [H, D, E] ('heads', 'head_dim', 'embed'). An HF Linear
  weight [H * D, E] maps to q_proj kernel as weight.T.reshape(E, H, D).
  """
  num_heads: int
  head_dim: int | None = None
  num_kv_heads: int | None = None
  out_features: int | None = None
  qkv_bias: bool = True
  out_bias: bool = True
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  attn_impl: str = 'auto'
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32
  kernel_init: Initializer = default_kernel_init
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array, kv: jax.Array | None = None, *, causal: bool = False,
               mask: jax.Array | None = None, segment_ids: SegmentIds | None = None,
               positions: jax.Array | None = None, kv_hook: KVHook | None = None,
               kv_lengths: jax.Array | None = None) -> jax.Array:
    """`mask`, `segment_ids` and `kv_lengths` are as in `dot_product_attention`.

    positions: int [B, S]; when given, RoPE (theta `rope_theta`, `rope_scaling`) rotates q and k. Self-attention
      only.
    kv_hook: a `KVHook` through which the keys and values pass before attention (a decoder's KV cache).
    """
    if positions is not None and kv is not None:
      raise ValueError('positions (RoPE) are only supported for self-attention (kv=None).')
    kv = x if kv is None else kv
    num_kv_heads = self.num_kv_heads or self.num_heads
    if self.head_dim is None and x.shape[-1] % self.num_heads:
      raise ValueError(f'width {x.shape[-1]} is not divisible by num_heads={self.num_heads}; set head_dim.')
    head_dim = self.head_dim or x.shape[-1] // self.num_heads
    dense = functools.partial(DenseGeneral, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=self.kernel_init, bias_init=self.bias_init)
    q = dense((self.num_heads, head_dim), ('embed', 'heads', 'head_dim'), use_bias=self.qkv_bias, name='q_proj')(x)
    kv_axes = ('embed', 'kv_heads', 'head_dim')
    k = dense((num_kv_heads, head_dim), kv_axes, use_bias=self.qkv_bias, name='k_proj')(kv)
    v = dense((num_kv_heads, head_dim), kv_axes, use_bias=self.qkv_bias, name='v_proj')(kv)
    if positions is not None:
      q = apply_rope(q, positions, theta=self.rope_theta, scaling=self.rope_scaling)
      k = apply_rope(k, positions, theta=self.rope_theta, scaling=self.rope_scaling)
    if kv_hook is not None:
      k, v = kv_hook(k, v)
    q = nn.with_logical_constraint(q, ('batch', 'length', 'heads', 'head_dim'))
    k = nn.with_logical_constraint(k, ('batch', 'length', 'kv_heads', 'head_dim'))
    v = nn.with_logical_constraint(v, ('batch', 'length', 'kv_heads', 'head_dim'))
    out = dot_product_attention(q, k, v, causal=causal, mask=mask, segment_ids=segment_ids, impl=self.attn_impl,
                                kv_lengths=kv_lengths)
    out = checkpoint_name(nn.with_logical_constraint(out, ('batch', 'length', 'heads', 'head_dim')), ATTENTION_OUTPUT)
    out = dense(self.out_features or x.shape[-1], ('heads', 'head_dim', 'embed'), axis=(-2, -1),
                use_bias=self.out_bias, name='o_proj')(out)
    return nn.with_logical_constraint(out, ('batch', 'length', 'embed'))
