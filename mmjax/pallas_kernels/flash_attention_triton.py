"""Flash attention kernels for the Pallas Triton backend (GPU); on CPU they run in interpret mode.

Layout [B, S, H, D], D already padded to a power of two and S to the tiles by the caller.
- forward and dQ: one program per (query tile, batch, head), looping over key tiles;
- dK/dV: one program per (key tile, batch, kv head), looping over the G query heads of the group and
  over query tiles, so the group sum happens in registers (no atomics, no repeated K/V).
Each loop runs in two phases: tiles that need no mask, then tiles that do (diagonal, padded keys,
segments), so the unmasked bulk skips the mask arithmetic.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from mmjax.pallas_kernels.flash_config import FlashConfig
from mmjax.pallas_kernels.kernel_math import dot_nn, dot_nt, dot_tn, normalizer, safe_max


def _cdiv(x, d: int):
  """Ceil division of a non-negative traced int."""
  return lax.div(x + (d - 1), d)


def _key_tiles_for_query_tile(i, cfg: FlashConfig, bq: int, bk: int):
  """(end of the unmasked key tiles, end of all visible key tiles) for query tile i."""
  full_tiles = cfg.kv_len // bk  # Key tiles with no padded key.
  live_tiles = -(-cfg.kv_len // bk)
  if cfg.causal:
    visible_last = jnp.maximum((i + 1) * bq + cfg.offset, 0)  # Keys the tile's last row sees.
    visible_first = jnp.maximum(i * bq + 1 + cfg.offset, 0)  # Keys its first row sees.
    hi = jnp.minimum(_cdiv(visible_last, bk), live_tiles)
    mid = jnp.minimum(lax.div(visible_first, bk), full_tiles)
  else:
    hi = jnp.int32(live_tiles)
    mid = jnp.int32(full_tiles)
  if cfg.segmented:
    mid = jnp.int32(0)
  return jnp.minimum(mid, hi), hi


def _query_tiles_for_key_tile(j, cfg: FlashConfig, bq: int, bk: int):
  """(start, end of the masked query tiles, end) of the query tiles that see key tile j."""
  live_tiles = -(-cfg.q_len // bq)
  key_tile_full = (j + 1) * bk <= cfg.kv_len
  if cfg.causal:
    lo = jnp.minimum(lax.div(jnp.maximum(j * bk - cfg.offset, 0), bq), live_tiles)
    # First query tile whose first row sees the whole key tile.
    first_full = _cdiv(jnp.maximum((j + 1) * bk - 1 - cfg.offset, 0), bq)
    mid = jnp.clip(first_full, lo, live_tiles)
  else:
    lo = jnp.int32(0)
    mid = lo
  if cfg.segmented:
    mid = jnp.int32(live_tiles)
  else:
    mid = jnp.where(key_tile_full, mid, live_tiles)
  lo = jnp.where(j * bk < cfg.kv_len, lo, live_tiles)  # A tile of padded keys needs no query.
  return lo, jnp.maximum(mid, lo), jnp.int32(live_tiles)


def _mask(q_pos, k_pos, q_seg, k_seg, cfg: FlashConfig):
  """[bq, bk] visibility from 1-D query/key positions and optional segment ids."""
  mask = k_pos[None, :] < cfg.kv_len
  if cfg.causal:
    mask = mask & (k_pos[None, :] <= q_pos[:, None] + cfg.offset)
  if q_seg is not None:
    mask = mask & (q_seg[:, None] == k_seg[None, :])
  return mask


def _forward_kernel(*refs, cfg: FlashConfig):
  if cfg.segmented:
    q_ref, k_ref, v_ref, qs_ref, ks_ref, o_ref, lse_ref = refs
  else:
    (q_ref, k_ref, v_ref, o_ref, lse_ref), qs_ref, ks_ref = refs, None, None
  bq, bk = cfg.blocks.block_q, cfg.blocks.block_k
  i = pl.program_id(0)
  q = q_ref[...]
  q_pos = i * bq + jnp.arange(bq, dtype=jnp.int32)
  q_seg = None if qs_ref is None else qs_ref[...]

  def body(t, carry, masked):
    acc, m, l = carry
    start = pl.multiple_of(t * bk, bk)
    k = k_ref[pl.ds(start, bk), :]
    v = v_ref[pl.ds(start, bk), :]
    s = dot_nt(q, k) * cfg.scale
    if masked:
      k_seg = None if ks_ref is None else ks_ref[pl.ds(start, bk)]
      k_pos = start + jnp.arange(bk, dtype=jnp.int32)
      s = jnp.where(_mask(q_pos, k_pos, q_seg, k_seg, cfg), s, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    m_shift = safe_max(m_new)
    alpha = jnp.exp(m - m_shift)
    p = jnp.exp(s - m_shift[:, None])
    l = alpha * l + jnp.sum(p, axis=1)
    acc = acc * alpha[:, None] + dot_nn(p.astype(v.dtype), v)
    return acc, m_new, l

  carry = (jnp.zeros(q.shape, jnp.float32), jnp.full((bq,), -jnp.inf, jnp.float32),
           jnp.zeros((bq,), jnp.float32))
  mid, hi = _key_tiles_for_query_tile(i, cfg, bq, bk)
  carry = lax.fori_loop(0, mid, functools.partial(body, masked=False), carry)
  acc, m, l = lax.fori_loop(mid, hi, functools.partial(body, masked=True), carry)
  inv, lse = normalizer(m, l)
  o_ref[...] = (acc * inv[:, None]).astype(o_ref.dtype)
  lse_ref[...] = lse


def _compiler_params(cfg: FlashConfig, backward: bool = False):
  if backward:
    return pltriton.CompilerParams(num_warps=cfg.num_warps_bwd, num_stages=cfg.num_stages_bwd)
  return pltriton.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _segment_specs(q_block: int, k_block: int, q_index, k_index):
  return [pl.BlockSpec((None, q_block), q_index), pl.BlockSpec((None, k_block), k_index)]


def forward(q, k, v, q_seg, kv_seg, cfg: FlashConfig):
  """q [B, Sq, H, D], k/v [B, Sk, Hkv, D] -> (out [B, Sq, H, D], lse [B, H, Sq] float32)."""
  b, sq, h, d = q.shape
  sk, hkv = k.shape[1], k.shape[2]
  group = h // hkv
  bq = cfg.blocks.block_q
  grid = (sq // bq, b, h)
  in_specs = [
      pl.BlockSpec((None, bq, None, d), lambda i, b_, h_: (b_, i, h_, 0)),
      pl.BlockSpec((None, sk, None, d), lambda i, b_, h_: (b_, 0, lax.div(h_, group), 0)),
      pl.BlockSpec((None, sk, None, d), lambda i, b_, h_: (b_, 0, lax.div(h_, group), 0)),
  ]
  args = [q, k, v]
  if cfg.segmented:
    in_specs += _segment_specs(bq, sk, lambda i, b_, h_: (b_, i), lambda i, b_, h_: (b_, 0))
    args += [q_seg, kv_seg]
  return pl.pallas_call(
      functools.partial(_forward_kernel, cfg=cfg),
      grid=grid,
      in_specs=in_specs,
      out_specs=[pl.BlockSpec((None, bq, None, d), lambda i, b_, h_: (b_, i, h_, 0)),
                 pl.BlockSpec((None, None, bq), lambda i, b_, h_: (b_, h_, i))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, sq), jnp.float32)],
      compiler_params=_compiler_params(cfg),
      interpret=cfg.interpret,
      cost_estimate=cfg.cost(b, h, d, 2, [q, k, v, q]),
      name="mmjax_flash_forward",
  )(*args)


def _dkv_kernel(*refs, cfg: FlashConfig, group: int):
  if cfg.segmented:
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qs_ref, ks_ref, dk_ref, dv_ref = refs
  else:
    (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref), qs_ref, ks_ref = refs, None, None
  bq, bk = cfg.blocks.block_q_dkv, cfg.blocks.block_k_dkv
  j = pl.program_id(0)
  k = k_ref[...]
  v = v_ref[...]
  k_pos = j * bk + jnp.arange(bk, dtype=jnp.int32)
  k_seg = None if ks_ref is None else ks_ref[...]
  lo, mid, hi = _query_tiles_for_key_tile(j, cfg, bq, bk)

  def body(t, carry, g, masked):
    dk, dv = carry
    start = pl.multiple_of(t * bq, bq)
    q = q_ref[pl.ds(start, bq), g, :]
    do = do_ref[pl.ds(start, bq), g, :]
    lse = lse_ref[g, pl.ds(start, bq)]
    delta = delta_ref[g, pl.ds(start, bq)]
    s = dot_nt(q, k) * cfg.scale
    if masked:
      q_seg = None if qs_ref is None else qs_ref[pl.ds(start, bq)]
      q_pos = start + jnp.arange(bq, dtype=jnp.int32)
      s = jnp.where(_mask(q_pos, k_pos, q_seg, k_seg, cfg), s, -jnp.inf)
    p = jnp.exp(s - lse[:, None])
    dv = dv + dot_tn(p.astype(do.dtype), do)
    ds = p * (dot_nt(do, v) - delta[:, None])
    dk = dk + dot_tn(ds.astype(q.dtype), q)
    return dk, dv

  def head(g, carry):
    carry = lax.fori_loop(lo, mid, functools.partial(body, g=g, masked=True), carry)
    return lax.fori_loop(mid, hi, functools.partial(body, g=g, masked=False), carry)

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = lax.fori_loop(0, group, head, (zeros, zeros))
  dk_ref[...] = (dk * cfg.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(*refs, cfg: FlashConfig):
  if cfg.segmented:
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qs_ref, ks_ref, dq_ref = refs
  else:
    (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref), qs_ref, ks_ref = refs, None, None
  bq, bk = cfg.blocks.block_q_dq, cfg.blocks.block_k_dq
  i = pl.program_id(0)
  q = q_ref[...]
  do = do_ref[...]
  lse = lse_ref[...]
  delta = delta_ref[...]
  q_pos = i * bq + jnp.arange(bq, dtype=jnp.int32)
  q_seg = None if qs_ref is None else qs_ref[...]

  def body(t, dq, masked):
    start = pl.multiple_of(t * bk, bk)
    k = k_ref[pl.ds(start, bk), :]
    v = v_ref[pl.ds(start, bk), :]
    s = dot_nt(q, k) * cfg.scale
    if masked:
      k_seg = None if ks_ref is None else ks_ref[pl.ds(start, bk)]
      k_pos = start + jnp.arange(bk, dtype=jnp.int32)
      s = jnp.where(_mask(q_pos, k_pos, q_seg, k_seg, cfg), s, -jnp.inf)
    p = jnp.exp(s - lse[:, None])
    ds = p * (dot_nt(do, v) - delta[:, None])
    return dq + dot_nn(ds.astype(k.dtype), k)

  mid, hi = _key_tiles_for_query_tile(i, cfg, bq, bk)
  dq = jnp.zeros(q.shape, jnp.float32)
  dq = lax.fori_loop(0, mid, functools.partial(body, masked=False), dq)
  dq = lax.fori_loop(mid, hi, functools.partial(body, masked=True), dq)
  dq_ref[...] = (dq * cfg.scale).astype(dq_ref.dtype)


def backward(q, k, v, q_seg, kv_seg, out, lse, d_out, delta, cfg: FlashConfig):
  """Gradients (dq, dk, dv) in the layouts of q, k, v. lse and delta are [B, H, Sq] float32."""
  del out  # Only needed through delta, which the caller computed in XLA.
  b, sq, h, d = q.shape
  sk, hkv = k.shape[1], k.shape[2]
  group = h // hkv
  blocks = cfg.blocks

  bq, bk = blocks.block_q_dkv, blocks.block_k_dkv
  in_specs = [
      pl.BlockSpec((None, sq, group, d), lambda j, b_, g_: (b_, 0, g_, 0)),
      pl.BlockSpec((None, bk, None, d), lambda j, b_, g_: (b_, j, g_, 0)),
      pl.BlockSpec((None, bk, None, d), lambda j, b_, g_: (b_, j, g_, 0)),
      pl.BlockSpec((None, sq, group, d), lambda j, b_, g_: (b_, 0, g_, 0)),
      pl.BlockSpec((None, group, sq), lambda j, b_, g_: (b_, g_, 0)),
      pl.BlockSpec((None, group, sq), lambda j, b_, g_: (b_, g_, 0)),
  ]
  args = [q, k, v, d_out, lse, delta]
  if cfg.segmented:
    in_specs += _segment_specs(sq, bk, lambda j, b_, g_: (b_, 0), lambda j, b_, g_: (b_, j))
    args += [q_seg, kv_seg]
  kv_spec = pl.BlockSpec((None, bk, None, d), lambda j, b_, g_: (b_, j, g_, 0))
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, cfg=cfg, group=group),
      grid=(sk // bk, b, hkv),
      in_specs=in_specs,
      out_specs=[kv_spec, kv_spec],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=_compiler_params(cfg, backward=True),
      interpret=cfg.interpret,
      cost_estimate=cfg.cost(b, h, d, 4, [q, k, v, d_out, lse, delta, k, v]),
      name="mmjax_flash_dkv",
  )(*args)

  bq, bk = blocks.block_q_dq, blocks.block_k_dq
  q_spec = pl.BlockSpec((None, bq, None, d), lambda i, b_, h_: (b_, i, h_, 0))
  row_spec = pl.BlockSpec((None, None, bq), lambda i, b_, h_: (b_, h_, i))
  in_specs = [
      q_spec,
      pl.BlockSpec((None, sk, None, d), lambda i, b_, h_: (b_, 0, lax.div(h_, group), 0)),
      pl.BlockSpec((None, sk, None, d), lambda i, b_, h_: (b_, 0, lax.div(h_, group), 0)),
      q_spec, row_spec, row_spec,
  ]
  args = [q, k, v, d_out, lse, delta]
  if cfg.segmented:
    in_specs += _segment_specs(bq, sk, lambda i, b_, h_: (b_, i), lambda i, b_, h_: (b_, 0))
    args += [q_seg, kv_seg]
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, cfg=cfg),
      grid=(sq // bq, b, h),
      in_specs=in_specs,
      out_specs=q_spec,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=_compiler_params(cfg, backward=True),
      interpret=cfg.interpret,
      cost_estimate=cfg.cost(b, h, d, 3, [q, k, v, d_out, lse, delta, q]),
      name="mmjax_flash_dq",
  )(*args)
  return dq, dk, dv
