"""Split-K decode attention kernel for Mosaic TPU; `interpret=True` or `pltpu.InterpretParams` on CPU.

The cache is read as [B, S_max, Hkv * D] (a free reshape), one lane block of `heads_per_block` kv heads
at a time: the narrowest block whose width is a multiple of 128 lanes (1 head for D = 128, 2 for
D = 64), or all heads. The queries of those heads arrive block-diagonal, [heads * R, heads * D] with
zeros off the diagonal, so one matmul gives every head's scores against its own keys without slicing
lanes; the caller keeps the diagonal blocks of the result. (`supports` refuses blocks wider than 1024
lanes, where that wasted work would grow large.) Sequence lengths are scalar-prefetched: tiles past a
sequence's length are skipped and their index map repeats the last valid tile, so no DMA is issued.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from mmjax.pallas_kernels.kernel_math import TPU_LANES, dot_nn, dot_nt, safe_max, widen_lanes

PAD_ROW = -(1 << 30)  # Row offset of padding rows: their position is negative, so they see no key.


def _kernel(len_ref, row_t_ref, q_ref, k_ref, v_ref, acc_out, m_out, l_out, m_sc, l_sc, acc_sc, *,
            scale: float, num_queries: int, block_k: int, tiles_per_split: int, num_tiles: int):
  b, n, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  length = len_ref[b]
  tile = n * tiles_per_split + j

  @pl.when(j == 0)
  def _init():
    m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, jnp.float32)
    l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
    acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

  @pl.when((tile < num_tiles) & (tile * block_k < length))
  def _step():
    v = v_ref[...]
    s = dot_nt(q_ref[...], k_ref[...]) * scale
    k_pos = tile * block_k + lax.broadcasted_iota(jnp.int32, s.shape, 1)
    pos = length - num_queries + widen_lanes(row_t_ref[...], s.shape[1])
    s = jnp.where(k_pos <= pos, s, -jnp.inf)
    m_prev = m_sc[...]
    m_new = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
    m_shift = safe_max(m_new)
    alpha = jnp.exp(m_prev - m_shift)
    p = jnp.exp(s - widen_lanes(m_shift, s.shape[1]))
    l_sc[...] = alpha * l_sc[...] + jnp.sum(p, axis=1, keepdims=True)
    m_sc[...] = m_new
    acc_sc[...] = acc_sc[...] * widen_lanes(alpha, acc_sc.shape[1]) + dot_nn(p.astype(v.dtype), v)

  @pl.when(j == tiles_per_split - 1)
  def _finish():
    acc_out[...] = acc_sc[...]
    m_out[...] = m_sc[...]
    l_out[...] = l_sc[...]


def heads_per_block(num_kv_heads: int, head_dim: int) -> int:
  """Fewest kv heads whose lanes form a multiple of 128 (all heads when none do)."""
  for h in range(1, num_kv_heads + 1):
    if num_kv_heads % h == 0 and (h * head_dim) % TPU_LANES == 0:
      return h
  return num_kv_heads


def partials(q_rows, k_cache, v_cache, lengths, *, scale: float, num_queries: int, num_real_rows: int,
             block_k: int, num_splits: int, interpret):
  """q_rows [B, Hkv, R, D] (R % 8 == 0), caches [B, S_max, Hkv, D] with S_max % block_k == 0.

  Returns float32 partials acc [B, Hkv, N, R, D], m and l [B, Hkv, N, R] for N = num_splits.
  """
  b, hkv, rows, d = q_rows.shape
  s_max = k_cache.shape[1]
  hpb = heads_per_block(hkv, d)
  nhb = hkv // hpb
  width = hpb * d
  # Block-diagonal queries: row (h, r) carries q[h, r] in lanes [h * D, (h + 1) * D).
  q_bd = jnp.einsum("bnhrd,hg->bnhrgd", q_rows.reshape(b, nhb, hpb, rows, d),
                    jnp.eye(hpb, dtype=q_rows.dtype)).reshape(b, nhb, hpb * rows, width)
  r = jnp.arange(rows)
  row_t = jnp.where(r < num_real_rows, r % num_queries, PAD_ROW).astype(jnp.int32)
  row_t = jnp.broadcast_to(jnp.tile(row_t, hpb)[:, None], (hpb * rows, TPU_LANES))
  k_flat = k_cache.reshape(b, s_max, hkv * d)
  v_flat = v_cache.reshape(b, s_max, hkv * d)

  num_tiles = s_max // block_k
  tiles_per_split = -(-num_tiles // num_splits)

  def kv_index(b_, hb, n, j, lens):
    last = jnp.maximum(lax.div(lens[b_] + (block_k - 1), block_k) - 1, 0)
    return b_, jnp.minimum(n * tiles_per_split + j, last), hb

  kernel = functools.partial(_kernel, scale=scale, num_queries=num_queries, block_k=block_k,
                             tiles_per_split=tiles_per_split, num_tiles=num_tiles)
  part_rows = hpb * rows
  stat_spec = pl.BlockSpec((None, None, None, part_rows, TPU_LANES), lambda b_, hb, n, j, lens: (b_, hb, n, 0, 0))
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=1,
      grid=(b, nhb, num_splits, tiles_per_split),
      in_specs=[
          pl.BlockSpec((part_rows, TPU_LANES), lambda b_, hb, n, j, lens: (0, 0)),
          pl.BlockSpec((None, None, part_rows, width), lambda b_, hb, n, j, lens: (b_, hb, 0, 0)),
          pl.BlockSpec((None, block_k, width), kv_index),
          pl.BlockSpec((None, block_k, width), kv_index),
      ],
      out_specs=[
          pl.BlockSpec((None, None, None, part_rows, width), lambda b_, hb, n, j, lens: (b_, hb, n, 0, 0)),
          stat_spec, stat_spec,
      ],
      scratch_shapes=[pltpu.VMEM((part_rows, TPU_LANES), jnp.float32),
                      pltpu.VMEM((part_rows, TPU_LANES), jnp.float32),
                      pltpu.VMEM((part_rows, width), jnp.float32)],
  )
  stat_shape = jax.ShapeDtypeStruct((b, nhb, num_splits, part_rows, TPU_LANES), jnp.float32)
  acc, m, l = pl.pallas_call(
      kernel,
      grid_spec=grid_spec,
      out_shape=[jax.ShapeDtypeStruct((b, nhb, num_splits, part_rows, width), jnp.float32), stat_shape, stat_shape],
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=interpret,
      name="mmjax_decode_attention_tpu",
  )(lengths, row_t, q_bd, k_flat, v_flat)
  # Keep each head's own lanes: acc[..., (h, r), (h, d)].
  acc = acc.reshape(b, nhb, num_splits, hpb, rows, hpb, d)
  acc = jnp.diagonal(acc, axis1=3, axis2=5)  # [B, nhb, N, R, D, hpb]
  acc = jnp.moveaxis(acc, -1, 2).reshape(b, hkv, num_splits, rows, d)

  def stats(x):
    x = x[..., 0].reshape(b, nhb, num_splits, hpb, rows)
    return jnp.moveaxis(x, 3, 2).reshape(b, hkv, num_splits, rows)

  return acc, stats(m), stats(l)
