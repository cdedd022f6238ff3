"""Flash attention kernels for Mosaic TPU; on CPU they run under `interpret=True` or `pltpu.InterpretParams`.

Layout [B, H, S, D] (the caller transposes), S padded to tiles that are multiples of 128, D <= 128 or a
multiple of 128. The key axis (forward, dQ) or the (group head, query) axes (dK/dV) are innermost
"arbitrary" grid axes accumulating into VMEM scratch; the other axes are "parallel" (megacore).
Row statistics live lane-replicated in (rows, 128) tiles, and the log-sum-exp goes out as [.., S, 128]
and comes back for the backward as [.., 1, S] rows, the layouts Mosaic handles natively. Tiles that the
causal mask hides entirely are skipped, and their index maps repeat the last useful tile so the
pipeline issues no DMA for them.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from mmjax.pallas_kernels.flash_config import FlashConfig
from mmjax.pallas_kernels.kernel_math import TPU_LANES, TPU_SUBLANES, dot_nn, dot_nt, normalizer, safe_max, widen_lanes


def _cdiv(x, d: int):
  return lax.div(x + (d - 1), d)


def _tile_status(q_tile, k_tile, cfg: FlashConfig, bq: int, bk: int):
  """(any pair visible, some pair hidden) for a query tile and a key tile."""
  q_first, q_last = q_tile * bq, q_tile * bq + bq - 1
  k_first, k_last = k_tile * bk, k_tile * bk + bk - 1
  live = (k_first < cfg.kv_len) & (q_first < cfg.q_len)
  needs_mask = k_last >= cfg.kv_len
  if cfg.causal:
    live = live & (k_first <= q_last + cfg.offset)
    needs_mask = needs_mask | (k_last > q_first + cfg.offset)
  if cfg.segmented:
    needs_mask = jnp.bool_(True)
  return live, needs_mask


def _last_key_tile(q_tile, cfg: FlashConfig, bq: int, bk: int):
  """Index of the last key tile query tile `q_tile` needs (0 if none)."""
  last = -(-cfg.kv_len // bk) - 1
  if not cfg.causal:
    return jnp.int32(last)
  visible = jnp.maximum((q_tile + 1) * bq + cfg.offset, 1)
  return jnp.minimum(_cdiv(visible, bk) - 1, last)


def _first_query_tile(k_tile, cfg: FlashConfig, bq: int, bk: int):
  """Index of the first query tile that sees key tile `k_tile`."""
  if not cfg.causal:
    return jnp.int32(0)
  return lax.div(jnp.maximum(k_tile * bk - cfg.offset, 0), bq)


def _visible(rows_are_queries: bool, row_pos, col_pos, seg_equal, cfg: FlashConfig):
  q_pos, k_pos = (row_pos, col_pos) if rows_are_queries else (col_pos, row_pos)
  mask = k_pos < cfg.kv_len
  if cfg.causal:
    mask = mask & (k_pos <= q_pos + cfg.offset)
  if seg_equal is not None:
    mask = mask & seg_equal
  return mask


def _positions(shape, row_start, col_start):
  return (row_start + lax.broadcasted_iota(jnp.int32, shape, 0),
          col_start + lax.broadcasted_iota(jnp.int32, shape, 1))


def _segments_equal(col_ref, row_ref, shape):
  """col_ref (rows, 128) lane-replicated, row_ref (8, cols) sublane-replicated -> [rows, cols] equality."""
  return widen_lanes(col_ref[...], shape[1]) == row_ref[:1, :]


def _params(semantics):
  return pltpu.CompilerParams(dimension_semantics=semantics)


def _forward_kernel(*refs, cfg: FlashConfig, num_k_tiles: int):
  if cfg.segmented:
    q_ref, k_ref, v_ref, qs_ref, ks_ref, o_ref, lse_ref, m_sc, l_sc, acc_sc = refs
  else:
    (q_ref, k_ref, v_ref, o_ref, lse_ref, m_sc, l_sc, acc_sc), qs_ref, ks_ref = refs, None, None
  bq, bk = cfg.blocks.block_q, cfg.blocks.block_k
  d = acc_sc.shape[1]
  i, j = pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _init():
    m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, jnp.float32)
    l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
    acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

  def step(masked: bool):
    v = v_ref[...]
    s = dot_nt(q_ref[...], k_ref[...]) * cfg.scale
    if masked:
      rows, cols = _positions(s.shape, i * bq, j * bk)
      seg = None if qs_ref is None else _segments_equal(qs_ref, ks_ref, s.shape)
      s = jnp.where(_visible(True, rows, cols, seg, cfg), s, -jnp.inf)
    m_prev = m_sc[...]
    m_new = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
    m_shift = safe_max(m_new)
    alpha = jnp.exp(m_prev - m_shift)
    p = jnp.exp(s - widen_lanes(m_shift, bk))
    l_sc[...] = alpha * l_sc[...] + jnp.sum(p, axis=1, keepdims=True)
    m_sc[...] = m_new
    acc_sc[...] = acc_sc[...] * widen_lanes(alpha, d) + dot_nn(p.astype(v.dtype), v)

  live, needs_mask = _tile_status(i, j, cfg, bq, bk)
  pl.when(live & needs_mask)(lambda: step(True))
  pl.when(live & jnp.logical_not(needs_mask))(lambda: step(False))

  @pl.when(j == num_k_tiles - 1)
  def _finish():
    inv, lse = normalizer(m_sc[...], l_sc[...])
    o_ref[...] = (acc_sc[...] * widen_lanes(inv, d)).astype(o_ref.dtype)
    lse_ref[...] = lse


def _lane_segments(seg, rows_len):
  """[B, S] -> [B, S, 128] (one id per row, replicated over lanes)."""
  return jnp.broadcast_to(seg[:, :rows_len, None], (seg.shape[0], rows_len, TPU_LANES))


def _sublane_segments(seg, cols_len):
  """[B, S] -> [B, 8, S] (one id per column, replicated over sublanes)."""
  return jnp.broadcast_to(seg[:, None, :cols_len], (seg.shape[0], TPU_SUBLANES, cols_len))


def forward(q, k, v, q_seg, kv_seg, cfg: FlashConfig):
  """q [B, H, Sq, D], k/v [B, Hkv, Sk, D] -> (out [B, H, Sq, D], lse [B, H, Sq] float32)."""
  b, h, sq, d = q.shape
  hkv, sk = k.shape[1], k.shape[2]
  group = h // hkv
  bq, bk = cfg.blocks.block_q, cfg.blocks.block_k
  nk = sk // bk

  def kv_index(b_, h_, i, j):
    return b_, lax.div(h_, group), jnp.minimum(j, _last_key_tile(i, cfg, bq, bk)), 0

  in_specs = [
      pl.BlockSpec((None, None, bq, d), lambda b_, h_, i, j: (b_, h_, i, 0)),
      pl.BlockSpec((None, None, bk, d), kv_index),
      pl.BlockSpec((None, None, bk, d), kv_index),
  ]
  args = [q, k, v]
  if cfg.segmented:
    in_specs += [
        pl.BlockSpec((None, bq, TPU_LANES), lambda b_, h_, i, j: (b_, i, 0)),
        pl.BlockSpec((None, TPU_SUBLANES, bk), lambda b_, h_, i, j: (b_, 0, kv_index(b_, h_, i, j)[2])),
    ]
    args += [_lane_segments(q_seg, sq), _sublane_segments(kv_seg, sk)]
  out, lse = pl.pallas_call(
      functools.partial(_forward_kernel, cfg=cfg, num_k_tiles=nk),
      grid=(b, h, sq // bq, nk),
      in_specs=in_specs,
      out_specs=[pl.BlockSpec((None, None, bq, d), lambda b_, h_, i, j: (b_, h_, i, 0)),
                 pl.BlockSpec((None, None, bq, TPU_LANES), lambda b_, h_, i, j: (b_, h_, i, 0))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, h, sq, TPU_LANES), jnp.float32)],
      scratch_shapes=[pltpu.VMEM((bq, TPU_LANES), jnp.float32), pltpu.VMEM((bq, TPU_LANES), jnp.float32),
                      pltpu.VMEM((bq, d), jnp.float32)],
      compiler_params=_params(("parallel", "parallel", "parallel", "arbitrary")),
      interpret=cfg.interpret,
      cost_estimate=cfg.cost(b, h, d, 2, [q, k, v, q]),
      name="mmjax_flash_forward_tpu",
  )(*args)
  return out, lse[..., 0]


def _dkv_kernel(*refs, cfg: FlashConfig, group: int, num_q_tiles: int):
  if cfg.segmented:
    (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, ks_ref, qs_ref,
     dk_ref, dv_ref, dk_sc, dv_sc) = refs
  else:
    (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, dk_sc, dv_sc) = refs
    ks_ref = qs_ref = None
  bq, bk = cfg.blocks.block_q_dkv, cfg.blocks.block_k_dkv
  j, g, i = pl.program_id(2), pl.program_id(3), pl.program_id(4)

  @pl.when((g == 0) & (i == 0))
  def _init():
    dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
    dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

  def step(masked: bool):
    q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
    # Transposed scores [keys, queries]: every matmul below is NN or NT, and the row statistics
    # broadcast over sublanes.
    s_t = dot_nt(k, q) * cfg.scale
    if masked:
      rows, cols = _positions(s_t.shape, j * bk, i * bq)
      seg = None if ks_ref is None else _segments_equal(ks_ref, qs_ref, s_t.shape)
      s_t = jnp.where(_visible(False, rows, cols, seg, cfg), s_t, -jnp.inf)
    p_t = jnp.exp(s_t - lse_ref[...])
    dv_sc[...] += dot_nn(p_t.astype(do.dtype), do)
    ds_t = p_t * (dot_nt(v, do) - delta_ref[...])
    dk_sc[...] += dot_nn(ds_t.astype(q.dtype), q)

  live, needs_mask = _tile_status(i, j, cfg, bq, bk)
  pl.when(live & needs_mask)(lambda: step(True))
  pl.when(live & jnp.logical_not(needs_mask))(lambda: step(False))

  @pl.when((g == group - 1) & (i == num_q_tiles - 1))
  def _finish():
    dk_ref[...] = (dk_sc[...] * cfg.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _dq_kernel(*refs, cfg: FlashConfig, num_k_tiles: int):
  if cfg.segmented:
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qs_ref, ks_ref, dq_ref, dq_sc = refs
  else:
    (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, dq_sc), qs_ref, ks_ref = refs, None, None
  bq, bk = cfg.blocks.block_q_dq, cfg.blocks.block_k_dq
  i, j = pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _init():
    dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)

  def step(masked: bool):
    q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
    s = dot_nt(q, k) * cfg.scale
    if masked:
      rows, cols = _positions(s.shape, i * bq, j * bk)
      seg = None if qs_ref is None else _segments_equal(qs_ref, ks_ref, s.shape)
      s = jnp.where(_visible(True, rows, cols, seg, cfg), s, -jnp.inf)
    p = jnp.exp(s - lse_ref[0][:, None])
    ds = p * (dot_nt(do, v) - delta_ref[0][:, None])
    dq_sc[...] += dot_nn(ds.astype(k.dtype), k)

  live, needs_mask = _tile_status(i, j, cfg, bq, bk)
  pl.when(live & needs_mask)(lambda: step(True))
  pl.when(live & jnp.logical_not(needs_mask))(lambda: step(False))

  @pl.when(j == num_k_tiles - 1)
  def _finish():
    dq_ref[...] = (dq_sc[...] * cfg.scale).astype(dq_ref.dtype)


def backward(q, k, v, q_seg, kv_seg, out, lse, d_out, delta, cfg: FlashConfig):
  """Gradients (dq, dk, dv) in the layouts of q, k, v. lse and delta are [B, H, Sq] float32."""
  del out  # Only needed through delta, which the caller computed in XLA.
  b, h, sq, d = q.shape
  hkv, sk = k.shape[1], k.shape[2]
  group = h // hkv
  blocks = cfg.blocks
  lse_rows, delta_rows = lse[:, :, None, :], delta[:, :, None, :]

  bq, bk = blocks.block_q_dkv, blocks.block_k_dkv
  nq = sq // bq
  last_q_tile = -(-cfg.q_len // bq) - 1

  def q_tile(j, i):
    return jnp.minimum(jnp.maximum(i, _first_query_tile(j, cfg, bq, bk)), last_q_tile)

  def q_index(b_, g_, j, hg, i):
    return b_, g_ * group + hg, q_tile(j, i), 0

  def row_index(b_, g_, j, hg, i):
    return b_, g_ * group + hg, 0, q_tile(j, i)

  kv_spec = pl.BlockSpec((None, None, bk, d), lambda b_, g_, j, hg, i: (b_, g_, j, 0))
  in_specs = [
      pl.BlockSpec((None, None, bq, d), q_index), kv_spec, kv_spec,
      pl.BlockSpec((None, None, bq, d), q_index),
      pl.BlockSpec((None, None, 1, bq), row_index), pl.BlockSpec((None, None, 1, bq), row_index),
  ]
  args = [q, k, v, d_out, lse_rows, delta_rows]
  if cfg.segmented:
    in_specs += [
        pl.BlockSpec((None, bk, TPU_LANES), lambda b_, g_, j, hg, i: (b_, j, 0)),
        pl.BlockSpec((None, TPU_SUBLANES, bq), lambda b_, g_, j, hg, i: (b_, 0, q_tile(j, i))),
    ]
    args += [_lane_segments(kv_seg, sk), _sublane_segments(q_seg, sq)]
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, cfg=cfg, group=group, num_q_tiles=nq),
      grid=(b, hkv, sk // bk, group, nq),
      in_specs=in_specs,
      out_specs=[kv_spec, kv_spec],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      scratch_shapes=[pltpu.VMEM((bk, d), jnp.float32), pltpu.VMEM((bk, d), jnp.float32)],
      compiler_params=_params(("parallel", "parallel", "parallel", "arbitrary", "arbitrary")),
      interpret=cfg.interpret,
      cost_estimate=cfg.cost(b, h, d, 4, [q, k, v, d_out, lse, delta, k, v]),
      name="mmjax_flash_dkv_tpu",
  )(*args)

  bq, bk = blocks.block_q_dq, blocks.block_k_dq
  nk = sk // bk

  def kv_index(b_, h_, i, j):
    return b_, lax.div(h_, group), jnp.minimum(j, _last_key_tile(i, cfg, bq, bk)), 0

  q_spec = pl.BlockSpec((None, None, bq, d), lambda b_, h_, i, j: (b_, h_, i, 0))
  row_spec = pl.BlockSpec((None, None, 1, bq), lambda b_, h_, i, j: (b_, h_, 0, i))
  in_specs = [q_spec, pl.BlockSpec((None, None, bk, d), kv_index),
              pl.BlockSpec((None, None, bk, d), kv_index), q_spec, row_spec, row_spec]
  args = [q, k, v, d_out, lse_rows, delta_rows]
  if cfg.segmented:
    in_specs += [
        pl.BlockSpec((None, bq, TPU_LANES), lambda b_, h_, i, j: (b_, i, 0)),
        pl.BlockSpec((None, TPU_SUBLANES, bk), lambda b_, h_, i, j: (b_, 0, kv_index(b_, h_, i, j)[2])),
    ]
    args += [_lane_segments(q_seg, sq), _sublane_segments(kv_seg, sk)]
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, cfg=cfg, num_k_tiles=nk),
      grid=(b, h, sq // bq, nk),
      in_specs=in_specs,
      out_specs=q_spec,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      scratch_shapes=[pltpu.VMEM((bq, d), jnp.float32)],
      compiler_params=_params(("parallel", "parallel", "parallel", "arbitrary")),
      interpret=cfg.interpret,
      cost_estimate=cfg.cost(b, h, d, 3, [q, k, v, d_out, lse, delta, q]),
      name="mmjax_flash_dq_tpu",
  )(*args)
  return dq, dk, dv
