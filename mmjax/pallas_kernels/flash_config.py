"""The static description of one flash attention call, shared by the kernel families."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from jax.experimental import pallas as pl

from mmjax.pallas_kernels.block_sizes import BlockSizes


@dataclasses.dataclass(frozen=True)
class FlashConfig:
  """Everything static about a call. Lengths are the real ones; arrays arrive padded to the tiles.

  q_len, kv_len: real Sq, Sk. Padded keys (index >= kv_len) are masked; padded queries are sliced off.
  blocks: tiles already clamped to the padded lengths (all six set).
  interpret: False, True, or a pltpu.InterpretParams.
  """
  causal: bool
  scale: float
  q_len: int
  kv_len: int
  blocks: BlockSizes
  segmented: bool
  interpret: Any
  num_warps: int = 4
  num_warps_bwd: int = 4
  num_stages: int = 2
  num_stages_bwd: int = 2

  @property
  def offset(self) -> int:
    """Bottom-right causal alignment: query i sees key j iff j <= i + offset."""
    return self.kv_len - self.q_len

  def cost(self, batch: int, heads: int, head_dim: int, matmuls: int, arrays: Sequence[Any]) -> pl.CostEstimate:
    """XLA's cost estimate for one kernel: `matmuls` [Sq, Sk, D] products and one exp per visible pair,
    reading/writing `arrays` (anything with .shape and .dtype) once."""
    pairs = batch * heads * self.q_len * self.kv_len / (2 if self.causal else 1)
    nbytes = sum(math.prod(a.shape) * jnp.dtype(a.dtype).itemsize for a in arrays if a is not None)
    return pl.CostEstimate(flops=int(2 * matmuls * pairs * head_dim), transcendentals=int(pairs),
                           bytes_accessed=int(nbytes))
