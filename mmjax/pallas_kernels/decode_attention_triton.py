"""Split-K decode attention kernel for the Pallas Triton backend (GPU); interpret mode on CPU.

One program per (batch, kv head, split) walks its share of the cache's key tiles, stopping at the
sequence's length, and writes an unnormalised partial (acc, running max, running sum) that the caller
combines in XLA. The G query heads of a kv head and the Tq new tokens form the rows of one tile, so each
K/V tile is read once per kv head.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from mmjax.pallas_kernels.kernel_math import dot_nn, dot_nt, safe_max


def _kernel(q_ref, k_ref, v_ref, len_ref, acc_ref, m_ref, l_ref, *, scale: float, num_queries: int,
            num_real_rows: int, block_k: int, tiles_per_split: int):
  n = pl.program_id(2)
  length = len_ref[...]
  q = q_ref[...]
  rows = q.shape[0]
  # Row r holds query head r // Tq of the group and new token t = r % Tq at position length - Tq + t.
  r = jnp.arange(rows, dtype=jnp.int32)
  pos = jnp.where(r < num_real_rows, length - num_queries + lax.rem(r, num_queries), -1)
  first = n * tiles_per_split
  last = jnp.minimum(first + tiles_per_split, lax.div(length + (block_k - 1), block_k))

  def body(t, carry):
    acc, m, l = carry
    start = pl.multiple_of(t * block_k, block_k)
    k = k_ref[pl.ds(start, block_k), :]
    v = v_ref[pl.ds(start, block_k), :]
    s = dot_nt(q, k) * scale
    k_pos = start + jnp.arange(block_k, dtype=jnp.int32)
    s = jnp.where(k_pos[None, :] <= pos[:, None], s, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    m_shift = safe_max(m_new)
    alpha = jnp.exp(m - m_shift)
    p = jnp.exp(s - m_shift[:, None])
    return (acc * alpha[:, None] + dot_nn(p.astype(v.dtype), v), m_new,
            alpha * l + jnp.sum(p, axis=1))

  carry = (jnp.zeros(q.shape, jnp.float32), jnp.full((rows,), -jnp.inf, jnp.float32),
           jnp.zeros((rows,), jnp.float32))
  acc, m, l = lax.fori_loop(first, jnp.maximum(last, first), body, carry)
  acc_ref[...] = acc
  m_ref[...] = m
  l_ref[...] = l


def partials(q_rows, k_cache, v_cache, lengths, *, scale: float, num_queries: int, num_real_rows: int,
             block_k: int, num_splits: int, interpret, num_warps: int = 4, num_stages: int = 2):
  """q_rows [B, Hkv, R, D] (R a power of two >= 16), caches [B, S_max, Hkv, D] with S_max % block_k == 0.

  Returns float32 partials acc [B, Hkv, N, R, D], m and l [B, Hkv, N, R] for N = num_splits.
  """
  b, hkv, rows, d = q_rows.shape
  s_max = k_cache.shape[1]
  tiles = s_max // block_k
  tiles_per_split = -(-tiles // num_splits)
  kernel = functools.partial(_kernel, scale=scale, num_queries=num_queries, num_real_rows=num_real_rows,
                             block_k=block_k, tiles_per_split=tiles_per_split)
  cache_spec = pl.BlockSpec((None, s_max, None, d), lambda b_, h_, n: (b_, 0, h_, 0))
  stat_spec = pl.BlockSpec((None, None, None, rows), lambda b_, h_, n: (b_, h_, n, 0))
  return pl.pallas_call(
      kernel,
      grid=(b, hkv, num_splits),
      in_specs=[pl.BlockSpec((None, None, rows, d), lambda b_, h_, n: (b_, h_, 0, 0)), cache_spec, cache_spec,
                pl.BlockSpec((None,), lambda b_, h_, n: (b_,))],
      out_specs=[pl.BlockSpec((None, None, None, rows, d), lambda b_, h_, n: (b_, h_, n, 0, 0)),
                 stat_spec, stat_spec],
      out_shape=[jax.ShapeDtypeStruct((b, hkv, num_splits, rows, d), jnp.float32),
                 jax.ShapeDtypeStruct((b, hkv, num_splits, rows), jnp.float32),
                 jax.ShapeDtypeStruct((b, hkv, num_splits, rows), jnp.float32)],
      compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages),
      interpret=interpret,
      name="mmjax_decode_attention",
  )(q_rows, k_cache, v_cache, lengths)
