"""Tile sizes for the flash attention kernels, with per-backend defaults.

The GPU (Triton) numbers follow the Triton fused-attention tutorial and jax's Triton MHA. The TPU table
is keyed by `device_kind`; its entries are starting points to tune per generation (jax #24633: the
128-blocks default reached 7.3 of 197 TF/s on v5e), not measured optima.
"""
from __future__ import annotations

import dataclasses

from mmjax.pallas_kernels.kernel_math import next_power_of_2


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Query/key tile sizes. Backward tiles default to the forward ones when left as None.

  block_q, block_k: forward kernel tiles along Sq and Sk.
  block_q_dkv, block_k_dkv: dK/dV kernel tiles. block_q_dq, block_k_dq: dQ kernel tiles.
  GPU (Triton) tiles must be powers of two >= 16; TPU tiles multiples of 128.
  Tiles larger than the (padded) sequence are shrunk to fit it.
  num_warps and num_stages (forward), num_warps_bwd and num_stages_bwd (dK/dV and dQ) are Triton launch
  parameters (None: the per-head-dim defaults); the TPU kernels ignore them.
  """
  block_q: int
  block_k: int
  block_q_dkv: int | None = None
  block_k_dkv: int | None = None
  block_q_dq: int | None = None
  block_k_dq: int | None = None
  num_warps: int | None = None
  num_warps_bwd: int | None = None
  num_stages: int | None = None
  num_stages_bwd: int | None = None

  def filled(self) -> BlockSizes:
    """The same sizes with every backward tile made explicit."""
    return dataclasses.replace(
        self, block_q_dkv=self.block_q_dkv or self.block_q, block_k_dkv=self.block_k_dkv or self.block_k,
        block_q_dq=self.block_q_dq or self.block_q, block_k_dq=self.block_k_dq or self.block_k)

  def as_tuple(self) -> tuple[int, ...]:
    f = self.filled()
    return (f.block_q, f.block_k, f.block_q_dkv, f.block_k_dkv, f.block_q_dq, f.block_k_dq)


# Keys are matched as prefixes of jax.Device.device_kind, longest first ("TPU v5 lite" before "TPU v5").
TPU_BLOCK_SIZES: dict[str, BlockSizes] = {
    "TPU v4": BlockSizes(512, 512, 512, 512, 512, 512),
    "TPU v5 lite": BlockSizes(512, 1024, 512, 512, 512, 512),  # v5e: 16 MiB default scoped VMEM.
    "TPU v5": BlockSizes(512, 1024, 512, 1024, 512, 1024),  # v5p.
    "TPU v6 lite": BlockSizes(1024, 1024, 512, 1024, 1024, 512),  # v6e (Trillium): 32 MiB scoped VMEM.
}
TPU_DEFAULT_BLOCK_SIZES = BlockSizes(512, 512, 512, 512, 512, 512)


def tpu_block_sizes(device_kind: str) -> BlockSizes:
  for key in sorted(TPU_BLOCK_SIZES, key=len, reverse=True):
    if device_kind.startswith(key):
      return TPU_BLOCK_SIZES[key]
  return TPU_DEFAULT_BLOCK_SIZES


def triton_block_sizes(head_dim_padded: int, itemsize: int) -> BlockSizes:
  """Defaults for the Triton kernels; wide rows (fp32 or head_dim > 128) get smaller tiles to fit SMEM.

  The 16-bit entries are the best of experiments/bench/tune_flash.py on an H100 (S=4096, bf16, 2026-11-25):
  against the previous (128, 64) forward and (32, 64)/(64, 32) backward tiles they took the head-dim-128
  forward from 318 to 400 TFLOP/s and forward+backward from 150 to 321.
  """
  if head_dim_padded * itemsize > 256:
    return BlockSizes(64, 32, block_q_dkv=32, block_k_dkv=32, block_q_dq=64, block_k_dq=32)
  if head_dim_padded <= 64:
    return BlockSizes(64, 128, 64, 64, 64, 64, num_warps=4, num_warps_bwd=4, num_stages=2)
  return BlockSizes(128, 128, 64, 64, 64, 64, num_warps=8, num_warps_bwd=4, num_stages=3, num_stages_bwd=2)


def triton_num_warps(head_dim_padded: int) -> int:
  return 4 if head_dim_padded <= 64 else 8


def check_triton_blocks(blocks: BlockSizes) -> None:
  for b in blocks.as_tuple():
    if b < 16 or b != next_power_of_2(b):
      raise ValueError(f"GPU (Triton) block sizes must be powers of two >= 16, got {blocks}")


def check_tpu_blocks(blocks: BlockSizes) -> None:
  for b in blocks.as_tuple():
    if b % 128:
      raise ValueError(f"TPU block sizes must be multiples of 128, got {blocks}")
