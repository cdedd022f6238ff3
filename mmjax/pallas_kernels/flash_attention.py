"""Flash attention with a Pallas forward and backward: `flash_attention(q, k, v, ...)`.

Semantics match `mmjax.nn.attention.dot_product_attention` and `reference.attention_reference`:
layout [B, S, H, D]; k/v may have fewer heads (GQA, H % Hkv == 0, never repeated in memory);
scale defaults to 1/sqrt(D); fp32 accumulation, output in q.dtype; causal masks are bottom-right
aligned (query i sees key j iff j <= i + Sk - Sq); segment ids (non-negative) restrict attention to equal
nonzero ids, 0 marking padding that sees and is seen by nothing; a query row with no visible key returns zeros
and gets zero gradients.

The forward never builds the [Sq, Sk] matrix and saves the log-sum-exp; the backward (custom_vjp)
computes delta = sum(out * dO) in XLA, then runs a dK/dV kernel and a dQ kernel. Lengths that are not
multiples of the tiles and head dims the backend cannot tile directly are padded here, outside the
kernels, and padded keys are masked inside them.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from mmjax.pallas_kernels import flash_attention_tpu, flash_attention_triton
from mmjax.pallas_kernels.block_sizes import (
  BlockSizes,
  check_tpu_blocks,
  check_triton_blocks,
  tpu_block_sizes,
  triton_block_sizes,
  triton_num_warps,
)
from mmjax.pallas_kernels.flash_config import FlashConfig
from mmjax.pallas_kernels.kernel_math import next_power_of_2, round_up
from mmjax.pallas_kernels.support import MOSAIC_TPU, TRITON, problem, resolve_backend

_KERNELS = {TRITON: flash_attention_triton, MOSAIC_TPU: flash_attention_tpu}


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False,
                    q_segment_ids: jax.Array | None = None, kv_segment_ids: jax.Array | None = None,
                    scale: float | None = None, block_sizes: BlockSizes | None = None,
                    interpret: Any = None, backend: str | None = None) -> jax.Array:
  """Memory-efficient attention. q [B, Sq, H, D], k/v [B, Sk, Hkv, D] -> [B, Sq, H, D] in q.dtype.

  q_segment_ids [B, Sq] and kv_segment_ids [B, Sk] (int, >= 0) are given together or not at all; a query
    sees only keys of its own nonzero id (0 = padding: such a query's output is zeros).
  block_sizes: tiles (see BlockSizes); None picks per backend (TPU: per device_kind).
  interpret: None (auto: True on CPU), a bool, or `pltpu.InterpretParams()` (TPU interpreter, which
    implies the TPU kernels).
  backend: None (from jax.default_backend()), 'triton' or 'mosaic_tpu' (on CPU: interpret mode).
  Differentiable once (jax.grad / vjp); higher-order derivatives are not defined.
  """
  backend, interpret = resolve_backend(backend, interpret)
  q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
  why = problem(q.shape, k.shape, q.dtype, v_shape=v.shape, backend=backend)
  if why:
    raise ValueError(f"flash_attention: {why}")
  if not q.dtype == k.dtype == v.dtype:
    raise ValueError(f"flash_attention: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
  if (q_segment_ids is None) != (kv_segment_ids is None):
    raise ValueError("flash_attention: pass q_segment_ids and kv_segment_ids together")
  if q_segment_ids is not None:
    q_segment_ids = jnp.asarray(q_segment_ids, jnp.int32)
    kv_segment_ids = jnp.asarray(kv_segment_ids, jnp.int32)
    if q_segment_ids.shape != q.shape[:2] or kv_segment_ids.shape != k.shape[:2]:
      raise ValueError(f"flash_attention: segment ids must be [B, Sq] {q.shape[:2]} and [B, Sk] {k.shape[:2]}, "
                       f"got {q_segment_ids.shape} and {kv_segment_ids.shape}")
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
  return _flash_attention(q, k, v, q_segment_ids, kv_segment_ids, causal=bool(causal), scale=scale,
                          block_sizes=block_sizes, backend=backend, interpret=interpret)


def _clamp_blocks(blocks: BlockSizes, q_cap: int, k_cap: int) -> BlockSizes:
  f = blocks.filled()
  return dataclasses.replace(
      f, block_q=min(f.block_q, q_cap), block_k=min(f.block_k, k_cap), block_q_dkv=min(f.block_q_dkv, q_cap),
      block_k_dkv=min(f.block_k_dkv, k_cap), block_q_dq=min(f.block_q_dq, q_cap), block_k_dq=min(f.block_k_dq, k_cap))


def _pad_axes(x: jax.Array | None, sizes: dict[int, int]) -> jax.Array | None:
  if x is None:
    return None
  widths = [(0, sizes.get(a, n) - n) for a, n in enumerate(x.shape)]
  return x if all(w == (0, 0) for w in widths) else jnp.pad(x, widths)


@functools.partial(jax.jit, static_argnames=("causal", "scale", "block_sizes", "backend", "interpret"))
def _flash_attention(q, k, v, q_seg, kv_seg, *, causal, scale, block_sizes, backend, interpret):
  _, sq, _, d = q.shape
  sk = k.shape[1]
  if backend == TRITON:
    # Triton loads must have power-of-two sizes: pad D and use power-of-two tiles.
    d_pad = max(16, next_power_of_2(d))
    blocks = block_sizes or triton_block_sizes(d_pad, q.dtype.itemsize)
    check_triton_blocks(blocks)
    blocks = _clamp_blocks(blocks, max(16, next_power_of_2(sq)), max(16, next_power_of_2(sk)))
    num_warps = blocks.num_warps or triton_num_warps(d_pad)
    num_warps_bwd = blocks.num_warps_bwd or num_warps
  else:
    # Mosaic tiles (8, 128): D <= 128 is used as is (full dimension), wider D is padded to 128s.
    d_pad = d if d <= 128 else round_up(d, 128)
    blocks = block_sizes or tpu_block_sizes(jax.devices()[0].device_kind)
    check_tpu_blocks(blocks)
    blocks = _clamp_blocks(blocks, round_up(sq, 128), round_up(sk, 128))
    num_warps = num_warps_bwd = 4
  sq_pad = round_up(sq, math.lcm(blocks.block_q, blocks.block_q_dkv, blocks.block_q_dq))
  sk_pad = round_up(sk, math.lcm(blocks.block_k, blocks.block_k_dkv, blocks.block_k_dq))
  if q_seg is not None:
    # The kernels compare ids for equality only; giving padding distinct negative ids on the two sides makes a
    # padded query match no key and a padded key no query.
    q_seg, kv_seg = jnp.where(q_seg == 0, -1, q_seg), jnp.where(kv_seg == 0, -2, kv_seg)
  cfg = FlashConfig(causal=causal, scale=scale, q_len=sq, kv_len=sk, blocks=blocks,
                    segmented=q_seg is not None, interpret=interpret, num_warps=num_warps,
                    num_warps_bwd=num_warps_bwd, num_stages=blocks.num_stages or 2,
                    num_stages_bwd=blocks.num_stages_bwd or blocks.num_stages or 2)
  q_seg, kv_seg = _pad_axes(q_seg, {1: sq_pad}), _pad_axes(kv_seg, {1: sk_pad})
  if backend == TRITON:
    q, k, v = (_pad_axes(x, {1: s, 3: d_pad}) for x, s in ((q, sq_pad), (k, sk_pad), (v, sk_pad)))
    return _attention(q, k, v, q_seg, kv_seg, cfg, backend)[:, :sq, :, :d]
  q, k, v = (_pad_axes(jnp.swapaxes(x, 1, 2), {2: s, 3: d_pad})
             for x, s in ((q, sq_pad), (k, sk_pad), (v, sk_pad)))
  out = _attention(q, k, v, q_seg, kv_seg, cfg, backend)
  return jnp.swapaxes(out[:, :, :sq, :d], 1, 2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _attention(q, k, v, q_seg, kv_seg, cfg: FlashConfig, backend: str):
  return _KERNELS[backend].forward(q, k, v, q_seg, kv_seg, cfg)[0]


def _attention_fwd(q, k, v, q_seg, kv_seg, cfg: FlashConfig, backend: str):
  out, lse = _KERNELS[backend].forward(q, k, v, q_seg, kv_seg, cfg)
  return out, (q, k, v, q_seg, kv_seg, out, lse)


def _attention_bwd(cfg: FlashConfig, backend: str, residuals, d_out):
  q, k, v, q_seg, kv_seg, out, lse = residuals
  d_out = d_out.astype(out.dtype)
  delta = jnp.sum(out.astype(jnp.float32) * d_out.astype(jnp.float32), axis=-1)
  if backend == TRITON:
    delta = jnp.swapaxes(delta, 1, 2)  # [B, Sq, H] -> [B, H, Sq]
  dq, dk, dv = _KERNELS[backend].backward(q, k, v, q_seg, kv_seg, out, lse, d_out, delta, cfg)
  return dq, dk, dv, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)
