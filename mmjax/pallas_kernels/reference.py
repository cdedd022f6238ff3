"""Plain-jnp float32 references for the Pallas attention kernels (the yardstick their tests use).

Same conventions as `mmjax.nn.attention.dot_product_attention`: layout [B, S, H, D], GQA by grouping
query heads (head h uses kv head h // (H // Hkv)), bottom-right causal alignment, segment-id masks (equal
nonzero ids; 0 = padding), and zeros (with zero gradients) for query rows that see no key. Both functions
return float32 whatever the input dtype, so comparisons measure the kernel's rounding rather than the
reference's.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax


def attention_mask(q_len: int, kv_len: int, *, causal: bool = False, q_segment_ids: jax.Array | None = None,
                   kv_segment_ids: jax.Array | None = None) -> jax.Array:
  """Boolean visibility [B or 1, Sq, Sk]: query i sees key j (segment id 0 = padding, sees nothing)."""
  mask = jnp.ones((1, q_len, kv_len), bool)
  if causal:
    i = jnp.arange(q_len)[:, None]
    j = jnp.arange(kv_len)[None, :]
    mask = mask & (j <= i + (kv_len - q_len))[None]
  if q_segment_ids is not None:
    mask = mask & (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]) & (q_segment_ids != 0)[:, :, None]
  return mask


def _masked_attention(q, k, v, mask, scale):
  """q [B, Sq, H, D], k/v [B, Sk, Hkv, D], mask broadcastable to [B, Sq, Sk] -> float32 [B, Sq, H, D]."""
  b, sq, h, d = q.shape
  hkv = k.shape[2]
  q = q.astype(jnp.float32).reshape(b, sq, hkv, h // hkv, d)
  k = k.astype(jnp.float32)
  v = v.astype(jnp.float32)
  hi = lax.Precision.HIGHEST
  s = jnp.einsum("bqkgd,bskd->bkgqs", q, k, precision=hi) * scale
  mask = mask[:, None, None]
  s = jnp.where(mask, s, -jnp.inf)
  m = lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
  p = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0))
  denom = jnp.sum(p, axis=-1, keepdims=True)
  p = p / jnp.where(denom > 0, denom, 1.0)
  out = jnp.einsum("bkgqs,bskd->bqkgd", p, v, precision=hi)
  return out.reshape(b, sq, h, d)


def attention_reference(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False,
                        q_segment_ids: jax.Array | None = None, kv_segment_ids: jax.Array | None = None,
                        scale: float | None = None) -> jax.Array:
  """Full-matrix softmax attention. q [B, Sq, H, D], k/v [B, Sk, Hkv, D] -> float32 [B, Sq, H, D]."""
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
  mask = attention_mask(q.shape[1], k.shape[1], causal=causal, q_segment_ids=q_segment_ids,
                        kv_segment_ids=kv_segment_ids)
  return _masked_attention(q, k, v, mask, scale)


def decode_attention_reference(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, lengths: jax.Array, *,
                               scale: float | None = None) -> jax.Array:
  """Attention of Tq new queries over a KV cache. q [B, Tq, H, D], caches [B, S_max, Hkv, D],
  lengths [B] (valid entries, including the Tq new ones) -> float32 [B, Tq, H, D].

  Query t sits at position lengths[b] - Tq + t and sees cache positions j <= that position.
  """
  tq, s_max = q.shape[1], k_cache.shape[1]
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
  pos = jnp.asarray(lengths)[:, None] - tq + jnp.arange(tq)[None, :]  # [B, Tq]
  mask = jnp.arange(s_max)[None, None, :] <= pos[:, :, None]
  return _masked_attention(q, k_cache, v_cache, mask, scale)
