"""Pallas attention kernels: flash attention (forward + backward) and split-K decode attention.

Each kernel sits beside a plain-jnp float32 reference (`reference.py`) that the tests compare it with.
Backends: Triton on GPU, Mosaic on TPU, interpret mode on CPU (see `support.py`).
"""
from mmjax.pallas_kernels.block_sizes import BlockSizes
from mmjax.pallas_kernels.decode_attention import decode_attention
from mmjax.pallas_kernels.flash_attention import flash_attention
from mmjax.pallas_kernels.reference import attention_reference, decode_attention_reference
from mmjax.pallas_kernels.support import MOSAIC_TPU, TRITON, supports

__all__ = [
    "BlockSizes",
    "MOSAIC_TPU",
    "TRITON",
    "attention_reference",
    "decode_attention",
    "decode_attention_reference",
    "flash_attention",
    "supports",
]
