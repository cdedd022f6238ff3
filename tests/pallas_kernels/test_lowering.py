"""The kernels lower for real accelerators: Triton IR for CUDA and Mosaic for TPU, via jax.export.

This runs the Pallas Triton and Mosaic lowering rules on CPU (power-of-two loads, (8, 128) block
shapes, supported primitives). It does not run the Triton or Mosaic compilers, so it cannot catch
register/SMEM/VMEM limits or Mosaic layout failures; those need the hardware.
"""
from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import pytest
from jax import export

flash_module = importlib.import_module("mmjax.pallas_kernels.flash_attention")
decode_module = importlib.import_module("mmjax.pallas_kernels.decode_attention")

PLATFORMS = [("cuda", "triton"), ("tpu", "mosaic_tpu")]


def _export(fn, platform, *args):
  checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")] if platform == "cuda" else []
  text = export.export(jax.jit(fn), platforms=[platform], disabled_checks=checks)(*args).mlir_module()
  marker = "__gpu$xla.gpu.triton" if platform == "cuda" else "tpu_custom_call"
  return text.count(marker)


@pytest.mark.parametrize("platform, backend", PLATFORMS)
def test_flash_forward_and_backward_lower(platform, backend):
  q = jax.ShapeDtypeStruct((2, 300, 8, 72), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((2, 1000, 2, 72), jnp.bfloat16)
  q_seg = jax.ShapeDtypeStruct((2, 300), jnp.int32)
  kv_seg = jax.ShapeDtypeStruct((2, 1000), jnp.int32)

  def grads(q, k, v, q_seg, kv_seg):
    def attend(q, k, v):
      return flash_module._flash_attention(q, k, v, q_seg, kv_seg, causal=True, scale=0.125, block_sizes=None,
                                           backend=backend, interpret=False)
    out, vjp = jax.vjp(attend, q, k, v)
    return vjp(out)

  assert _export(grads, platform, q, kv, kv, q_seg, kv_seg) == 3  # Forward, dK/dV and dQ kernels.


@pytest.mark.parametrize("platform, backend", PLATFORMS)
def test_decode_lowers(platform, backend):
  q = jax.ShapeDtypeStruct((16, 1, 32, 128), jnp.bfloat16)
  cache = jax.ShapeDtypeStruct((16, 4096, 8, 128), jnp.bfloat16)
  lengths = jax.ShapeDtypeStruct((16,), jnp.int32)

  def attend(q, k, v, lengths):
    return decode_module._decode_attention(q, k, v, lengths, scale=0.088, backend=backend, interpret=False,
                                           num_splits=None, block_k=None)

  assert _export(attend, platform, q, cache, cache, lengths) == 1
