"""The one elementwise Pallas kernel behind the fused sampler steps: K-way guidance, then a scheduler's update.

Operands are 2-D views of the arrays (a reshape, no copy): the sample and the noise as [R, L], each of the K model
outputs as [R, L·r] (r = 2 when the output carries learned-variance channels after the ε ones, else 1). With r = 1
L is lane-dense (a multiple of 128 on TPU, a power of two on GPU) and a lane's channel is lane % C; with r = 2 a row
is one pixel (L = C) so that ε and v sit side by side in the same row. The grid walks row blocks. The per-step
scalars (schedule coefficients, then the K − 1 guidance scales) are one small float32 vector: SMEM through scalar
prefetch on TPU, a plain (power-of-two padded) ref on GPU, so a traced step index never recompiles.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu, triton as pltriton

from mmjax.pallas_kernels.kernel_math import TPU_LANES, TPU_SUBLANES, next_power_of_2
from mmjax.pallas_kernels.support import MOSAIC_TPU

# Elements per operand block: 512 KiB of float32 on TPU (K + 3 double-buffered operands stay well inside the
# 16 MiB scoped VMEM), 4096 on GPU (one program of 4 warps, 32 elements a thread).
TPU_BLOCK_ELEMENTS = 1 << 17
TRITON_BLOCK_ELEMENTS = 1 << 12


@dataclasses.dataclass(frozen=True)
class Layout:
  """The 2-D views: sample [rows, width]; each model output [rows, width · ratio]; blocks of block_rows rows."""
  rows: int
  width: int
  ratio: int
  block_rows: int

  @property
  def grid(self) -> int:
    return -(-self.rows // self.block_rows)


def layout_problem(size: int, channels: int, ratio: int, period: int, backend: str) -> str:
  """Why no legal layout exists for a sample of `size` elements ('' when one does); see `layout`."""
  if ratio == 2 and backend == MOSAIC_TPU:
    return ("learned-variance outputs interleave ε and v within a pixel's lanes; the TPU kernel only takes "
            "lane-dense outputs (XLA fuses this step as well)")
  if backend != MOSAIC_TPU and ratio == 2 and channels != next_power_of_2(channels):
    return f'the GPU kernel reads a pixel of {channels} channels as one load, which must be a power of two'
  if _width(size, channels, ratio, period, backend) is None:
    unit = 'a multiple of 128' if backend == MOSAIC_TPU else 'a power of two'
    return f'{size} sample elements cannot be cut into rows of {unit} lanes holding whole {period}-channel pixels'
  return ''


def _width(size: int, channels: int, ratio: int, period: int, backend: str, cap: int | None = None) -> int | None:
  """The widest legal row dividing `size`, no wider than `cap` where a legal one is (a block holds whole rows)."""
  if ratio == 2:
    return channels
  if backend == MOSAIC_TPU:
    unit = math.lcm(TPU_LANES, period)
    candidates = [unit * m for m in (8, 4, 2, 1)]
  else:
    candidates = [w for w in (1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1) if w % period == 0]
  fitting = [w for w in candidates if size % w == 0]
  narrow = [w for w in fitting if cap is None or w <= cap]
  return (narrow or fitting or [None])[0]


def layout(size: int, channels: int, ratio: int, period: int, backend: str, block_elements: int | None) -> Layout:
  """Rows of `width` lanes, `period` dividing the width so that lane % period is a lane's channel.

  TPU: width a multiple of 128 (and of period), row blocks a multiple of 8 or all rows (a ragged last block is
  masked by Mosaic). GPU: width and row blocks powers of two, the blocks dividing the rows (Triton does not mask).
  """
  elements = block_elements or (TPU_BLOCK_ELEMENTS if backend == MOSAIC_TPU else TRITON_BLOCK_ELEMENTS)
  # A TPU block is at least 8 rows, so its rows are at most an eighth of the block.
  width = _width(size, channels, ratio, period, backend,
                 cap=elements // TPU_SUBLANES if backend == MOSAIC_TPU else elements)
  rows = size // width
  target = max(1, elements // (width * ratio))
  if backend == MOSAIC_TPU:
    block = min(rows, max(TPU_SUBLANES, target // TPU_SUBLANES * TPU_SUBLANES))
  else:
    block = 1
    while block * 2 <= target and rows % (block * 2) == 0:
      block *= 2
  return Layout(rows, width, ratio, block)


def launch(body: Callable, coefs: jax.Array, outputs: jax.Array, extras: list[jax.Array], out_dtype, *,
           lay: Layout, backend: str, interpret, name: str) -> jax.Array:
  """Runs body(coef_ref, *branch_refs, *extra_refs, o_ref) over the row blocks.

  coefs [S] float32; outputs [K, rows, width · ratio]; extras: [rows, width] arrays (sample, noise). Returns
  [rows, width] in out_dtype.
  """
  k = outputs.shape[0]
  branch_block, row_block = (lay.block_rows, lay.width * lay.ratio), (lay.block_rows, lay.width)
  out_shape = jax.ShapeDtypeStruct((lay.rows, lay.width), out_dtype)
  operands = [outputs] * k + list(extras)
  if backend == MOSAIC_TPU:
    branch_specs = [pl.BlockSpec((None, *branch_block), functools.partial(lambda b, i, c: (b, i, 0), b))
                    for b in range(k)]
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1, grid=(lay.grid,),
        in_specs=branch_specs + [pl.BlockSpec(row_block, lambda i, c: (i, 0)) for _ in extras],
        out_specs=pl.BlockSpec(row_block, lambda i, c: (i, 0)))
    return pl.pallas_call(body, grid_spec=grid_spec, out_shape=out_shape,
                          compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
                          interpret=interpret, name=name)(coefs, *operands)
  padded = next_power_of_2(coefs.shape[0])
  coefs = jnp.pad(coefs, (0, padded - coefs.shape[0]))
  branch_specs = [pl.BlockSpec((None, *branch_block), functools.partial(lambda b, i: (b, i, 0), b))
                  for b in range(k)]
  return pl.pallas_call(
      body, grid=(lay.grid,), out_shape=out_shape,
      in_specs=[pl.BlockSpec((padded,), lambda i: (0,))] + branch_specs
      + [pl.BlockSpec(row_block, lambda i: (i, 0)) for _ in extras],
      out_specs=pl.BlockSpec(row_block, lambda i: (i, 0)),
      compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=1),
      interpret=interpret, name=name)(coefs, *operands)


def guided(coef_ref, branch_refs, *, first_scale: int, width: int, ratio: int, period: int, guided_channels: int,
           out_dtype) -> jax.Array:
  """ε_0 + Σ_k s_k·(ε_k − ε_{k−1}) over lanes whose channel < guided_channels, ε_{K−1} elsewhere: [block, width]
  float32, rounded through out_dtype as `mmjax.diffusion.guidance.combine` returns it."""
  def load(ref):
    return (ref[...] if ratio == 1 else ref[:, pl.ds(0, width)]).astype(jnp.float32)

  branches = [load(r) for r in branch_refs]
  if len(branches) == 1:
    return branches[0]
  total = coef_ref[first_scale] * (branches[1] - branches[0])
  for k in range(2, len(branches)):
    total = total + coef_ref[first_scale + k - 1] * (branches[k] - branches[k - 1])
  result = branches[0] + total
  if guided_channels < period:
    channel = lax.rem(lax.broadcasted_iota(jnp.int32, result.shape, 1), period)
    result = jnp.where(channel < guided_channels, result, branches[-1])
  return result.astype(out_dtype).astype(jnp.float32)


def variance_channels(ref, width: int) -> jax.Array:
  """The learned-variance channels v of an [block, 2·width] output block: [block, width] float32."""
  return ref[:, pl.ds(width, width)].astype(jnp.float32)
