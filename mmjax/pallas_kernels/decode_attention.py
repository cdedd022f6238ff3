"""Decode attention over a KV cache with split-K Pallas kernels: `decode_attention(q, k_cache, v_cache, lengths)`.

The cache's sequence axis is cut into `num_splits` chunks processed by parallel programs, so one long
sequence still fills the chip; each chunk writes an unnormalised partial softmax (acc, max, sum) and
the partials are combined here in XLA. The G query heads of a kv head are processed together (GQA
without repeating K/V). Forward only.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from mmjax.pallas_kernels import decode_attention_tpu, decode_attention_triton
from mmjax.pallas_kernels.block_sizes import triton_num_warps
from mmjax.pallas_kernels.kernel_math import next_power_of_2, round_up, safe_max
from mmjax.pallas_kernels.support import MOSAIC_TPU, TRITON, problem, resolve_backend

TRITON_BLOCK_K = 64
TPU_BLOCK_K = 512


def decode_attention(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, lengths: jax.Array, *,
                     scale: float | None = None, interpret: Any = None, backend: str | None = None,
                     num_splits: int | None = None, block_k: int | None = None) -> jax.Array:
  """Attention of Tq new tokens over a KV cache. Returns [B, Tq, H, D] in q.dtype.

  q [B, Tq, H, D] with 1 <= Tq <= 8; k_cache, v_cache [B, S_max, Hkv, D] (H % Hkv == 0);
  lengths [B] int: valid cache entries per sequence, counting the Tq new tokens already written.
  Query t sits at position lengths[b] - Tq + t and sees cache positions j <= that position; a query
  with no visible entry (lengths[b] < Tq - t) returns zeros.
  num_splits: chunks of the cache processed in parallel (None: enough programs to fill the device).
  block_k: cache tile (Triton: a power of two >= 16; TPU: a multiple of 128); None picks a default.
  interpret, backend: as for flash_attention.
  """
  backend, interpret = resolve_backend(backend, interpret)
  q, k_cache, v_cache = jnp.asarray(q), jnp.asarray(k_cache), jnp.asarray(v_cache)
  why = problem(q.shape, k_cache.shape, q.dtype, v_shape=v_cache.shape, kind="decode", backend=backend,
                strict=False)
  if why:
    raise ValueError(f"decode_attention: {why}")
  if not q.dtype == k_cache.dtype == v_cache.dtype:
    raise ValueError(f"decode_attention: dtypes differ: q {q.dtype}, caches {k_cache.dtype}, {v_cache.dtype}")
  lengths = jnp.asarray(lengths, jnp.int32)
  if lengths.shape != (q.shape[0],):
    raise ValueError(f"decode_attention: lengths must be [B] = ({q.shape[0]},), got {lengths.shape}")
  if block_k is not None:
    ok = (block_k >= 16 and block_k == next_power_of_2(block_k)) if backend == TRITON else block_k % 128 == 0
    if not ok:
      raise ValueError(f"decode_attention: block_k={block_k} must be a power of two >= 16 (GPU) or a "
                       "multiple of 128 (TPU)")
  if num_splits is not None and num_splits < 1:
    raise ValueError(f"decode_attention: num_splits must be >= 1, got {num_splits}")
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
  return _decode_attention(q, k_cache, v_cache, lengths, scale=scale, backend=backend, interpret=interpret,
                           num_splits=num_splits, block_k=block_k)


def _cache_tile(s_max: int, requested: int, smallest: int) -> int:
  """Largest power-of-two multiple of `smallest`, at most `requested`, dividing s_max (0 if none)."""
  tile = requested
  while tile >= smallest:
    if s_max % tile == 0:
      return tile
    tile //= 2
  return 0


def _auto_splits(num_tiles: int, programs: int, backend: str, interpret) -> int:
  if interpret:
    return min(num_tiles, 2)  # Enough to exercise the combine; interpret mode gains nothing from more.
  if backend == MOSAIC_TPU:
    return min(num_tiles, 2) if programs < 2 else 1  # Splits only feed the second TensorCore (megacore).
  cores = getattr(jax.devices()[0], "core_count", 132)
  return max(1, min(num_tiles, -(-2 * cores // programs)))


def combine(acc: jax.Array, m: jax.Array, l: jax.Array) -> jax.Array:
  """Merges split partials: acc [..., N, R, D], m and l [..., N, R] -> normalised [..., R, D] float32."""
  m_all = safe_max(jnp.max(m, axis=-2, keepdims=True))
  w = jnp.exp(m - m_all)  # Splits that saw no key have m = -inf and weigh 0.
  total = jnp.sum(w * l, axis=-2)
  out = jnp.sum(w[..., None] * acc, axis=-3)
  return out * jnp.where(total > 0, 1.0 / jnp.where(total > 0, total, 1.0), 0.0)[..., None]


@functools.partial(jax.jit, static_argnames=("scale", "backend", "interpret", "num_splits", "block_k"))
def _decode_attention(q, k_cache, v_cache, lengths, *, scale, backend, interpret, num_splits, block_k):
  b, tq, h, d = q.shape
  s_max, hkv = k_cache.shape[1], k_cache.shape[2]
  group = h // hkv
  real_rows = group * tq
  lengths = jnp.clip(lengths, 0, s_max)
  # Rows of a kv head: query head g of the group and new token t at row g * Tq + t.
  q_rows = jnp.transpose(q.reshape(b, tq, hkv, group, d), (0, 2, 3, 1, 4)).reshape(b, hkv, real_rows, d)
  if backend == TRITON:
    rows, d_pad = max(16, next_power_of_2(real_rows)), max(16, next_power_of_2(d))
    block_k = block_k or TRITON_BLOCK_K
    tile = _cache_tile(s_max, block_k, 16)
    s_pad = s_max if tile else round_up(s_max, block_k)
    tile = tile or block_k
  else:
    rows, d_pad = round_up(real_rows, 8), (d if d <= 128 else round_up(d, 128))
    block_k = block_k or TPU_BLOCK_K
    tile = _cache_tile(s_max, block_k, 128)
    if not tile and s_max % 8 == 0 and s_max <= block_k:
      tile = s_max  # One tile spanning the whole (short) cache is (8, 128)-legal as a full dimension.
    s_pad = s_max if tile else round_up(s_max, 128)
    tile = tile or _cache_tile(s_pad, block_k, 128)
  # Padding copies the cache; `supports` steers the dispatcher away from the cases that need it.
  pads = ((0, 0), (0, s_pad - s_max), (0, 0), (0, d_pad - d))
  if any(p != (0, 0) for p in pads):
    k_cache, v_cache = jnp.pad(k_cache, pads), jnp.pad(v_cache, pads)
  q_rows = jnp.pad(q_rows, ((0, 0), (0, 0), (0, rows - real_rows), (0, d_pad - d)))
  num_tiles = s_pad // tile
  splits = min(num_splits or _auto_splits(num_tiles, b * hkv, backend, interpret), num_tiles)
  kwargs = dict(scale=scale, num_queries=tq, num_real_rows=real_rows, block_k=tile, num_splits=splits,
                interpret=interpret)
  if backend == TRITON:
    acc, m, l = decode_attention_triton.partials(q_rows, k_cache, v_cache, lengths,
                                                 num_warps=triton_num_warps(d_pad), **kwargs)
  else:
    acc, m, l = decode_attention_tpu.partials(q_rows, k_cache, v_cache, lengths, **kwargs)
  out = combine(acc, m, l)[:, :, :real_rows, :d]  # [B, Hkv, G * Tq, D]
  out = jnp.transpose(out.reshape(b, hkv, group, tq, d), (0, 3, 1, 2, 4)).reshape(b, tq, h, d)
  return out.astype(q.dtype)
